"""Fetch CT series from a PACS over DICOMweb (QIDO-RS to find them, WADO-RS to retrieve them).

The retrieved instances are written to a private temporary folder and imported exactly like a
DICOM folder on disk, so both paths share one implementation. WADO-RS is asked for the server's
default transfer syntax (Explicit VR Little Endian), which every server must offer and which needs
no codec here; the server decompresses losslessly stored data itself.

Nothing is logged: dicomweb-client and urllib3 put study and series UIDs in their URLs and log
lines, so their loggers are silenced and failures are reported by status and position only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from components.errors import TransientError, UserError

STUDY_UID, SERIES_UID = "0020000D", "0020000E"
RETRIES_ENV = "HEMO_DICOMWEB_ATTEMPTS"
"""Attempts per request with exponential back-off (dicomweb-client's; default 5, ~30 s for a server
that does not answer). 1 fails at once."""
_QUIET = ("dicomweb_client", "urllib3", "requests")


@dataclass
class Fetched:
    series: int = 0
    instances: int = 0
    seconds: float = 0.0


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    saved = []
    for name in _QUIET:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.CRITICAL + 1)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, level, propagate in saved:
            logger.setLevel(level)
            logger.propagate = propagate


def check_since(since: str) -> str:
    if not re.fullmatch(r"\d{8}", since or ""):
        raise UserError(f"--since {since!r}: give a study date as YYYYMMDD, e.g. --since 20240101")
    return since


def _value(item: dict, tag: str) -> str | None:
    values = (item.get(tag) or {}).get("Value") or []
    return str(values[0]) if values else None


def _failure(url: str, exc: Exception, what: str) -> Exception:
    """One line for a failed request, without the request's URL path (it holds UIDs)."""
    import requests

    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            return UserError(f"DICOMweb server {url} refused the {what} (HTTP {code}): it needs credentials or "
                             "does not allow this client")
        if 400 <= code < 500:
            return UserError(f"DICOMweb server {url} rejected the {what} (HTTP {code}); check --dicomweb (the "
                             "service root, e.g. http://host:8042/dicom-web) and the study UIDs")
        return TransientError(f"DICOMweb server {url} failed the {what} (HTTP {code}); retry later")
    if isinstance(exc, requests.RequestException):
        return TransientError(f"DICOMweb server {url} did not answer the {what} ({type(exc).__name__}); check the "
                              "URL and that the server runs, then retry")
    return exc


def find_series(client: object, url: str, studies: Sequence[str], modality: str | None,
                since: str | None) -> list[tuple[str, str]]:
    """(study UID, series UID) of every series to import, found by QIDO-RS."""
    filters = {"Modality": modality} if modality else {}
    found: list[tuple[str, str]] = []
    try:
        if studies:
            for position, study in enumerate(studies, start=1):
                hits = client.search_for_series(study_instance_uid=study, search_filters=filters)  # type: ignore[attr-defined]
                if not hits:
                    raise UserError(f"--study #{position}: the server has no {modality or ''} series for this study "
                                    "UID; check the UID (it is not printed) and --modality")
                found.extend((study, s) for s in (_value(h, SERIES_UID) for h in hits) if s)
        else:
            filters["StudyDate"] = f"{check_since(since or '')}-"
            hits = client.search_for_series(search_filters=filters, get_remaining=True)  # type: ignore[attr-defined]
            found.extend((st, se) for st, se in ((_value(h, STUDY_UID), _value(h, SERIES_UID)) for h in hits)
                         if st and se)
    except UserError:
        raise
    except Exception as exc:
        raise _failure(url, exc, "search (QIDO-RS)") from exc
    return sorted(set(found))


def fetch(url: str, dest: Path, studies: Sequence[str] = (), modality: str | None = "CT",
          since: str | None = None) -> Fetched:
    """Retrieve the chosen series into ``dest`` (opaque file names) and count them."""
    import time

    from dicomweb_client import DICOMwebClient

    from hemo_model.dicom import quiet

    if not studies and not since:
        raise UserError("--dicomweb needs --study UID (repeatable) or a query: --modality CT --since YYYYMMDD")
    started = time.perf_counter()
    result = Fetched()
    with _silenced():
        client = DICOMwebClient(url=url.rstrip("/"))
        attempts = max(1, int(os.environ.get(RETRIES_ENV, "5")))
        client.set_http_retry_params(retry=attempts > 1, max_attempts=attempts)
        for number, (study, series) in enumerate(find_series(client, url, studies, modality, since)):
            try:
                datasets = client.retrieve_series(study_instance_uid=study, series_instance_uid=series)
            except Exception as exc:
                raise _failure(url, exc, "retrieve (WADO-RS)") from exc
            folder = dest / f"series{number:05d}"
            folder.mkdir(parents=True)
            with quiet():
                for i, ds in enumerate(datasets):
                    ds.save_as(folder / f"{i:05d}.dcm", enforce_file_format=True)
            result.series += 1
            result.instances += len(datasets)
    result.seconds = time.perf_counter() - started
    return result
