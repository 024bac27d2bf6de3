"""services/dicomweb.retrieve_series: the UIDs `hemo report --dicomweb` takes from the mapping go
into WADO-RS request paths, so anything but a DICOM UID is refused before a request is made, and
the message never repeats the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from hemo_pipeline.services.dicomweb import parse_service_root, retrieve_series
from hemo_pipeline.services.errors import UserError

# nothing answers here: a request would fail as transient (3), not as this user error
ROOT = parse_service_root("https://pacs.invalid/dicom-web")


@pytest.mark.parametrize("pair", [("1.2.840.1", "../../studies"), ("1.2.840.1?x=1", "1.2.3"),
                                  ("1.2.840.1", "1." * 40), ("", "1.2.3")])
def test_a_value_that_is_not_a_uid_is_refused_before_any_request(pair: tuple[str, str], tmp_path: Path) -> None:
    with pytest.raises(UserError) as caught:
        retrieve_series(ROOT, [("1.2.3", "1.2.4"), pair], tmp_path, warn=False)
    message = str(caught.value)
    assert "series #2" in message and "not a DICOM UID" in message
    assert not [part for part in pair if part and part in message]
    assert not list(tmp_path.iterdir())
