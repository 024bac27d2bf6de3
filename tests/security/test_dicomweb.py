"""DICOMweb against a hostile or careless server (issue 16, part 3 and the DICOMweb row of part 4).

Each test is one attack, played by a small server in a thread on 127.0.0.1 (https with a
throwaway certificate that the client trusts through REQUESTS_CA_BUNDLE, as a hospital's own CA
would be, or plain http where that is the point). ``hemo import-dicom`` runs in-process through
``hemo_pipeline.cli.main`` and must end in its exit code and one ``error:`` line. On the code before
the fix: the credentials of the URL were printed, a server that ignores ``offset`` was paged
until it gave up, a response was read whole whatever its size, http and cross-host redirects
were followed, a malformed URL was a traceback, and a corrupt instance stopped the import.
"""

from __future__ import annotations

import base64
import datetime
import io
import ipaddress
import json
import ssl
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from hemo_pipeline.cli import main
from tests.conftest import free_port
from tests.dicom_files import hu_volume, series_datasets

SECRET, USER = "s3cr3t-Pa55w0rd", "alice-pacs"
STUDY, SERIES = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
Responder = Callable[[BaseHTTPRequestHandler], None]


@dataclass
class Server:
    """A running test server: its DICOMweb root and what it was asked."""

    root: str
    port: int
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)
    sent: list[int] = field(default_factory=lambda: [0])
    """Body bytes the handlers wrote (streaming answers)."""


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key), made for this module."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hemo test PACS")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, certificate: tuple[Path, Path]) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEMO_DICOM_SALT", "dicomweb-security")
    monkeypatch.setenv("HEMO_DICOMWEB_ATTEMPTS", "1")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(certificate[0]))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy", "all_proxy",
                 "HEMO_DICOMWEB_TOKEN", "HEMO_DICOMWEB_USERNAME", "HEMO_DICOMWEB_PASSWORD", "HEMO_DICOMWEB_MAX_BYTES"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


@contextmanager
def serving(respond: Responder, certificate: tuple[Path, Path] | None) -> Iterator[Server]:
    """``respond`` answers every GET; https when a certificate is given."""
    server_state = Server(root="", port=0)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            server_state.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
            self.state = server_state  # type: ignore[attr-defined]
            try:
                respond(self)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
                pass  # the client hung up: what a refusal looks like from here

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    if certificate is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*map(str, certificate))
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]
    server_state.port = port
    server_state.root = f"{'https' if certificate else 'http'}://127.0.0.1:{port}/dicom-web"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


def send(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"", content_type: str = "application/json",
         headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def qido_item(study: str, series: str) -> dict:
    return {"0020000D": {"vr": "UI", "Value": [study]}, "0020000E": {"vr": "UI", "Value": [series]},
            "00080060": {"vr": "CS", "Value": ["CT"]}}


def dicom_bytes(datasets: list) -> list[bytes]:
    parts = []
    for ds in datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        parts.append(buffer.getvalue())
    return parts


def multipart(parts: list[bytes], boundary: str = "hemo-test-boundary") -> tuple[bytes, str]:
    body = b"".join(b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p + b"\r\n"
                    for p in parts) + b"--" + boundary.encode() + b"--\r\n"
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def pacs(series: dict[tuple[str, str], list[bytes]]) -> Responder:
    """A well-behaved PACS: QIDO-RS with limit/offset honoured, WADO-RS of whole series."""
    items = [qido_item(st, se) for st, se in sorted(series)]

    def respond(handler: BaseHTTPRequestHandler) -> None:
        url = urlsplit(handler.path)
        segments = url.path.strip("/").split("/")[1:]  # after "dicom-web"
        query = parse_qs(url.query)
        if segments and segments[-1] == "series":  # QIDO-RS: /series or /studies/{uid}/series
            chosen = [i for i in items if len(segments) == 1 or i["0020000D"]["Value"][0] == segments[1]]
            offset, limit = int(query.get("offset", ["0"])[0]), int(query.get("limit", ["1000"])[0])
            send(handler, 200, json.dumps(chosen[offset:offset + limit]).encode(), "application/dicom+json")
        elif len(segments) == 4 and (segments[1], segments[3]) in series:
            body, content_type = multipart(series[(segments[1], segments[3])])
            send(handler, 200, body, content_type)
        else:
            send(handler, 404)

    return respond


def ct_series(name: str = "web", n: int = 24) -> list:
    return series_datasets(hu_volume(n), name=name, study=STUDY)


def run(*args: str) -> int:
    return main(["import-dicom", "--no-mlflow", "--out", "data", *args])


def one_error(capsys: pytest.CaptureFixture[str]) -> tuple[str, str]:
    """(the single error line, all of stdout + stderr); other stderr lines may only be warnings."""
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and all(line.startswith(("error: ", "warning: ")) for line in lines), lines
    return errors[0], captured.out + captured.err


def answer_500(handler: BaseHTTPRequestHandler) -> None:
    send(handler, 500, b"boom")


def answer_401(handler: BaseHTTPRequestHandler) -> None:
    send(handler, 401, b"who are you", headers={"WWW-Authenticate": 'Basic realm="pacs"'})


@pytest.mark.parametrize("failure, code", [("http_500", 3), ("http_401", 2), ("dead_server", 3), ("bad_port", 2)])
def test_credentials_in_the_url_are_never_printed(project: Path, certificate: tuple[Path, Path], failure: str,
                                                  code: int, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: 'DICOMweb server https://alice-pacs:s3cr3t-Pa55w0rd@127.0.0.1:.../dicom-web failed ...'."""
    responder = {"http_500": answer_500, "http_401": answer_401}.get(failure, answer_500)
    with serving(responder, certificate) as server:
        port = {"dead_server": free_port(), "bad_port": 99999}.get(failure, server.port)
        url = f"https://{USER}:{SECRET}@127.0.0.1:{port}/dicom-web"
        assert run("--dicomweb", url, "--since", "20240101") == code
    error, everything = one_error(capsys)
    assert SECRET not in everything and USER not in everything, everything
    assert "https://***@127.0.0.1" in error
    if failure.startswith("http_"):  # the credentials were used, as basic auth, and only there
        path, headers = server.requests[0]
        assert headers["authorization"] == "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
        assert SECRET not in path and USER not in path


@pytest.mark.parametrize("env, expected", [
    ({"HEMO_DICOMWEB_TOKEN": "tok-" + SECRET}, "Bearer tok-" + SECRET),
    ({"HEMO_DICOMWEB_USERNAME": USER, "HEMO_DICOMWEB_PASSWORD": SECRET},
     "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()),
], ids=["token", "basic"])
def test_credentials_from_the_environment_are_sent_and_never_printed(
        project: Path, certificate: tuple[Path, Path], env: dict[str, str], expected: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the environment was not read (no Authorization header was sent)."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with serving(answer_401, certificate) as server:
        assert run("--dicomweb", server.root, "--since", "20240101") == 2
    error, everything = one_error(capsys)
    assert "refused the search (QIDO-RS) (HTTP 401)" in error and SECRET not in everything
    assert server.requests[0][1]["authorization"] == expected


def test_a_server_that_ignores_offset_is_refused_after_two_pages(project: Path, certificate: tuple[Path, Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Before: dicomweb-client's get_remaining paged until the server gave up (here after 60 pages)."""
    page = json.dumps([qido_item(STUDY, f"{SERIES}.{i}") for i in range(100)]).encode()

    def same_page_forever(handler: BaseHTTPRequestHandler) -> None:
        if len(handler.state.requests) > 60:  # type: ignore[attr-defined]  # bounds the test, not the client
            send(handler, 200, b"[]", "application/dicom+json")
        else:
            send(handler, 200, page, "application/dicom+json")

    with serving(same_page_forever, certificate) as server:
        assert run("--dicomweb", server.root, "--since", "20240101") == 2
    error, _ = one_error(capsys)
    assert "ignores the QIDO-RS offset" in error and "stopped after 2 requests" in error.lower()
    assert len(server.requests) == 2
    assert [parse_qs(urlsplit(p).query)["offset"] for p, _ in server.requests] == [["0"], ["100"]]


def test_a_search_over_max_series_is_refused(project: Path, certificate: tuple[Path, Path],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """Before: no cap; every series the search matched was retrieved (no --max-series)."""
    many = {(STUDY, f"{SERIES}.{i}"): [] for i in range(1000)}
    with serving(pacs(many), certificate) as server:
        assert run("--dicomweb", server.root, "--since", "20240101", "--max-series", "150") == 2
    error, _ = one_error(capsys)
    assert "matched more than 150 series (--max-series)" in error
    assert len(server.requests) == 2  # two pages of 100, no retrieve


def test_a_response_over_the_byte_cap_is_refused_while_streaming(project: Path, certificate: tuple[Path, Path],
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the whole answer was read into memory (here the server's 128 MiB, then a parse error)."""
    monkeypatch.setenv("HEMO_DICOMWEB_MAX_BYTES", "4MiB")
    chunk = b"\0" * (1 << 20)

    def endless(handler: BaseHTTPRequestHandler) -> None:
        if "/series?" in handler.path or handler.path.endswith("/series"):
            send(handler, 200, json.dumps([qido_item(STUDY, SERIES)]).encode(), "application/dicom+json")
            return
        handler.send_response(200)  # chunked, no Content-Length: only counting while reading can stop it
        handler.send_header("Content-Type", 'multipart/related; type="application/dicom"; boundary=b')
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        head = b"--b\r\nContent-Type: application/dicom\r\n\r\n"
        handler.wfile.write(f"{len(head):x}\r\n".encode() + head + b"\r\n")
        for _ in range(128):  # bounds the test, not the client
            handler.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            handler.state.sent[0] += len(chunk)  # type: ignore[attr-defined]
        handler.wfile.write(b"0\r\n\r\n")

    tracemalloc.start()
    try:
        with serving(endless, certificate) as server:
            assert run("--dicomweb", server.root, "--since", "20240101") == 2
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    error, _ = one_error(capsys)
    assert f"DICOMweb server {server.root} sent more than 4 MiB in one response (the byte cap)" in error
    assert server.sent[0] <= 48 << 20  # the connection was dropped (socket buffers let some more through)
    assert peak < 64 << 20, f"peak Python memory {peak / 2**20:.0f} MiB"
    assert not Path("data").exists()


def test_a_declared_content_length_over_the_cap_is_refused_before_reading(
        project: Path, certificate: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a search answer of any declared size was read (searches are capped at 32 MiB now)."""
    def huge_search(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/dicom+json")
        handler.send_header("Content-Length", str(10 << 30))
        handler.end_headers()
        handler.wfile.write(b"[" + b" " * (1 << 20))

    with serving(huge_search, certificate) as server:
        assert run("--dicomweb", server.root, "--since", "20240101") == 2
    error, _ = one_error(capsys)
    assert "sent more than 32 MiB in one response (the byte cap)" in error


def test_plain_http_is_refused_without_allow_http(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: http:// was used silently, credentials and patient data in the clear."""
    datasets = ct_series()
    with serving(pacs({(STUDY, datasets[0].SeriesInstanceUID): dicom_bytes(datasets)}), None) as server:
        assert run("--dicomweb", server.root, "--since", "20240101") == 2
        error, _ = one_error(capsys)
        assert "plain http sends patient data and credentials unencrypted" in error and "--allow-http" in error
        assert server.requests == []  # refused before any request
        assert run("--dicomweb", server.root, "--since", "20240101", "--allow-http") == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"warning: --allow-http: traffic with {server.root} is not encrypted")
    assert "import-dicom: 1 series -> data/test" in captured.out


@pytest.mark.parametrize("target", ["other_port", "http_downgrade"])
def test_a_redirect_to_another_server_is_refused(project: Path, certificate: tuple[Path, Path], target: str,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Before: requests followed the redirect; the other server got the query (and its UIDs)."""
    monkeypatch.setenv("HEMO_DICOMWEB_TOKEN", "tok-" + SECRET)
    with serving(answer_500, certificate if target == "other_port" else None) as elsewhere:
        def redirect(handler: BaseHTTPRequestHandler) -> None:
            location = elsewhere.root if target == "other_port" else f"http://127.0.0.1:{handler.server.server_address[1]}"
            send(handler, 302, b"", headers={"Location": location + handler.path.removeprefix("/dicom-web")})

        with serving(redirect, certificate) as server:
            assert run("--dicomweb", server.root, "--since", "20240101") == 2
    error, everything = one_error(capsys)
    shown = elsewhere.root.removesuffix("/dicom-web") if target == "other_port" else f"http://127.0.0.1:{server.port}"
    assert f"redirected a request to {shown}, another scheme, host or port; not followed" in error
    assert elsewhere.requests == [] and len(server.requests) == 1 and SECRET not in everything


def test_a_redirect_within_the_server_is_followed(project: Path, certificate: tuple[Path, Path],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    datasets = ct_series()
    good = pacs({(STUDY, datasets[0].SeriesInstanceUID): dicom_bytes(datasets)})

    def moved(handler: BaseHTTPRequestHandler) -> None:
        if handler.path.startswith("/old/"):
            send(handler, 301, b"", headers={"Location": handler.path.replace("/old/dicom-web/", "/dicom-web/", 1)})
        else:
            good(handler)

    with serving(moved, certificate) as server:
        assert run("--dicomweb", server.root.replace("/dicom-web", "/old/dicom-web"), "--since", "20240101") == 0
    assert "import-dicom: 1 series -> data/test" in capsys.readouterr().out


@pytest.mark.parametrize("url", [
    "https://", "pacs.invalid/dicom-web", "https://pacs.invalid:99999/dicom-web", "https://pacs.invalid:80a/dw",
    "https://pacs invalid/dicom-web", "https://pacs.invalid/dicom web", "ftp://pacs.invalid/dicom-web",
    "https://[::1/dicom-web", "https://pacs.invalid/dicom-web?token=abc", "https://pac$.invalid/dw",
    f"https://{USER}:{SECRET}@pacs.invalid:99999/dicom-web", f"https://{USER}:{SECRET}/x@pacs.invalid/dicom-web",
])
def test_a_malformed_url_is_one_line_and_exit_2_before_any_request(project: Path, url: str,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Before: dicomweb-client's ValueError('Malformed URL: ...') ended in a traceback, exit 1."""
    assert run("--dicomweb", url, "--since", "20240101") == 2
    error, everything = one_error(capsys)
    assert error.startswith("error: --dicomweb ") and "give the service root as https://host" in error
    assert SECRET not in everything and USER not in everything and "token=abc" not in everything
    assert not Path("data").exists() and not Path(".hemo-dicom-salt").exists()


def test_corrupt_and_oversized_instances_are_counted_and_the_import_goes_on(
        project: Path, certificate: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """Before: a garbage part stopped the import with pydicom's InvalidDicomError (a traceback)."""
    datasets = ct_series()
    huge = ct_series("huge", 1)[0]
    huge.Rows = huge.Columns = 60000  # the header claims 3.6 gigapixels; the pixel data is 32 x 32
    parts = dicom_bytes(datasets)
    parts = parts[:5] + [b"\x00garbage, not DICOM" * 10, dicom_bytes([huge])[0], parts[5][:300]] + parts[5:]
    with serving(pacs({(STUDY, datasets[0].SeriesInstanceUID): parts}), certificate) as server:
        assert run("--dicomweb", server.root, "--study", STUDY) == 0
    out = capsys.readouterr().out
    assert "dicomweb: 1 series / 27 instances retrieved" in out
    assert "files: 27 read, 24 used; skipped: not_dicom 1, over_pixel_budget 1, unreadable 1" in out
    report = json.loads(Path("reports/import.json").read_text())
    assert report["series_kept"] == 1 and report["slices_written"] == 24
