"""hemo_pipeline.services.http_safety: what a redacted URL still shows, sizes, origins."""

from __future__ import annotations

import pytest

from hemo_pipeline.services.http_safety import Origin, parse_size, redact_url, size_text


@pytest.mark.parametrize("url, shown", [
    ("https://pacs.example/dicom-web", "https://pacs.example/dicom-web"),
    ("https://user:pw@pacs.example:8042/dw", "https://***@pacs.example:8042/dw"),
    ("https://:pw@pacs.example/dw", "https://***@pacs.example/dw"),
    ("https://u:p/a?b#c@pacs.example/dw", "https://***@pacs.example/dw"),  # a password a URL parser cuts short
    ("https://u:p w@pacs.example/dw", "https://***@pacs.example/dw"),
    ("u:pw@pacs.example/dw", "***@pacs.example/dw"),  # no scheme
    ("https://h/x?access_token=abc&limit=3&api_key=k#id_token=z",
     "https://h/x?access_token=***&limit=3&api_key=***#id_token=***"),
    ("https://h/x?X-Amz-Signature=00ff&offset=0", "https://h/x?X-Amz-Signature=***&offset=0"),
    ("https://[::1]:8042/dw", "https://[::1]:8042/dw"),
])
def test_redact_url_hides_userinfo_and_secret_parameters(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("text, size", [("1048576", 1 << 20), ("2GiB", 2 << 30), ("512 MiB", 512 << 20),
                                        ("64m", 64 << 20),
                                        ("3G", 3 << 30), ("10K", 10 << 10), ("100B", 100)])
def test_parse_size_takes_binary_units(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1", "lots", "2 TB", "1.5G", "G"])
def test_parse_size_refuses_what_is_not_a_size(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_size_text_and_origins() -> None:
    assert [size_text(n) for n in (2 << 30, 1536 << 10, 100)] == ["2 GiB", "1536 KiB", "100 bytes"]
    assert Origin.of("https://PACS.example/dw") == Origin("https", "pacs.example", 443)
    assert Origin.of("http://pacs.example:80/x") == Origin.of("http://pacs.example/y")
    assert Origin.of("https://pacs.example:8443/") != Origin.of("https://pacs.example/")
    assert Origin.of("ftp://pacs.example/") is None and Origin.of("https://h:99999/") is None
    assert str(Origin("https", "::1", 8042)) == "https://[::1]:8042"
