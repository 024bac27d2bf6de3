"""Fetch CT series from a PACS over DICOMweb (QIDO-RS to find them, WADO-RS to retrieve them).

The retrieved instances are written, as the server sent them, to a private temporary folder and
imported exactly like a DICOM folder on disk, so both paths share one implementation (and one
set of checks: a corrupt instance is counted there like a corrupt file, an image over the pixel
budget is skipped from its header). WADO-RS is asked for the server's default transfer syntax
(Explicit VR Little Endian), which every server must offer and which needs no codec here.

A PACS URL is input a user typed and a server we do not control, so (issue 16):

* **The service root is checked before any request** (:func:`parse_service_root`): http(s) with a
  host, a valid port, no spaces, query or fragment; a malformed one is one line, exit 2. ``https``
  is required unless ``--allow-http`` (then a warning line).
* **Credentials** come from the environment: ``HEMO_DICOMWEB_TOKEN`` (a bearer token) or
  ``HEMO_DICOMWEB_USERNAME``/``HEMO_DICOMWEB_PASSWORD`` (basic auth). ``user:pass@`` in the URL
  still works (a warning says the process list shows it) but is taken out of the URL before use.
  No URL is ever shown unredacted (:func:`hemo_pipeline.services.http_safety.redact_url`).
* **One origin, capped responses** (:class:`hemo_pipeline.services.http_safety.OneOriginSession`, handed to
  dicomweb-client as its session): a redirect to another scheme, host or port is refused before
  anything is sent there; every response is counted while it is read and stopped past the byte cap
  (``--max-response-bytes`` / ``HEMO_DICOMWEB_MAX_BYTES``, default 2 GiB; searches 32 MiB).
* **Paging we control**: QIDO-RS pages of :data:`PAGE_SIZE` with our own offset; a search stops
  on an empty page or a short one (unless the server's Warning header says more follow), is
  refused when a page holds no series it has not returned before (a server that ignores
  ``offset`` would otherwise be paged forever), and is bounded by ``--max-series`` and a page cap.

Exit codes: refusals a retry cannot fix (malformed URL, http without --allow-http, a redirect to
another server, a response over the cap, a server that ignores offset, too many series, HTTP 4xx)
are user errors (2); a server that does not answer or answers 5xx is transient (3).

Nothing is logged: dicomweb-client and urllib3 put study and series UIDs in their URLs and log
lines, so their loggers are silenced and failures are reported by status and position only.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
from dicomweb_client import DICOMwebClient
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from hemo_pipeline.services.errors import TransientError, UserError
from hemo_pipeline.services.http_safety import OneOriginSession, Origin, parse_size, redact_url, size_text

STUDY_UID, SERIES_UID = "0020000D", "0020000E"
RETRIES_ENV = "HEMO_DICOMWEB_ATTEMPTS"
"""Attempts per request, with exponential back-off (0, 2, 4, 8 s...; default 5: ~15 s for a server
that does not answer). 1 fails at once."""
MAX_BYTES_ENV = "HEMO_DICOMWEB_MAX_BYTES"
TOKEN_ENV, USERNAME_ENV, PASSWORD_ENV = "HEMO_DICOMWEB_TOKEN", "HEMO_DICOMWEB_USERNAME", "HEMO_DICOMWEB_PASSWORD"
DEFAULT_MAX_BYTES = 2 << 30
"""Byte cap of one response (one series over WADO-RS): a 1,000-slice 512 x 512 CT is ~0.5 GiB."""
SEARCH_MAX_BYTES = 32 << 20
"""Byte cap of one QIDO-RS answer (JSON): a page of 100 series is ~0.2 MiB."""
DEFAULT_MAX_SERIES = 1000
PAGE_SIZE = 100
"""QIDO-RS ``limit`` of each page."""
MIN_PAGES = 50
"""A search asks at most max(MIN_PAGES, max_series / PAGE_SIZE + 1) pages (servers may return
fewer than ``limit`` per page)."""
MAX_PARTS = 20_000
"""Instances in one WADO-RS answer: more is not a CT series but a file-count bomb."""
TIMEOUT = 20.0
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_HOST = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9_-]*[A-Za-z0-9])?)*\.?")
_ACCEPT_DICOM = 'multipart/related; type="application/dicom"'
_QUIET = ("dicomweb_client", "urllib3", "requests", "python_multipart", "multipart")


def is_uid(value: str) -> bool:
    """A DICOM UID: digits and dots, at most 64 characters (PS3.5 9.1). Every UID that goes into a
    request path is checked with this, so no answer or file can put '../' or '?' there."""
    return len(value) <= 64 and _UID.fullmatch(value) is not None


@dataclass
class Fetched:
    series: int = 0
    instances: int = 0
    seconds: float = 0.0
    searches: int = 0
    """QIDO-RS requests (pages)."""
    bytes: int = 0
    """Body bytes received (searches and retrievals)."""


@dataclass(frozen=True)
class Limits:
    """Bounds on what one import may ask of a server (flags of ``hemo import-dicom``)."""

    max_series: int = DEFAULT_MAX_SERIES
    max_response_bytes: int = DEFAULT_MAX_BYTES
    allow_http: bool = False

    @property
    def max_pages(self) -> int:
        return max(MIN_PAGES, math.ceil(self.max_series / PAGE_SIZE) + 1)


@dataclass(frozen=True, repr=False)
class ServiceRoot:
    """A checked DICOMweb service root: ``url`` without userinfo (what requests go to), its
    origin, the userinfo credentials if there were any, and ``shown``, the redacted form for messages."""

    url: str
    origin: Origin
    shown: str
    username: str | None = None
    password: str | None = None

    def __repr__(self) -> str:  # never the password, not even in a debugger or a traceback
        return f"ServiceRoot({self.shown!r})"


def parse_service_root(url: str, allow_http: bool = False) -> ServiceRoot:
    """``--dicomweb URL`` checked before any request; UserError (exit 2) naming the redacted URL."""
    shown = redact_url(url)

    def bad(why: str) -> UserError:
        return UserError(f"--dicomweb {shown}: {why}; give the service root as https://host[:port]/path, e.g. "
                         "https://pacs.example/dicom-web")

    if not url or any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise bad("the URL is empty or holds spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad("not a URL (the port must be a number from 1 to 65535; an IPv6 host goes in [brackets])") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise bad(f"the scheme must be https (or http with --allow-http), not {scheme or 'missing'!r}")
    host = parts.hostname or ""
    if not host:
        raise bad("there is no host")
    if not (_HOST.fullmatch(host) or _is_ipv6(host)):
        raise bad("the host is not a host name or IP address")
    if port == 0:
        raise bad("port 0 is not a port")
    if parts.query or parts.fragment or url.rstrip().endswith(("?", "#")):
        raise bad(f"a service root takes no ?query or #fragment (a token goes in {TOKEN_ENV})")
    if scheme == "http" and not allow_http:
        raise UserError(f"--dicomweb {shown}: plain http sends patient data and credentials unencrypted; use https, "
                        "or add --allow-http for a server on a trusted network (e.g. a PACS on 127.0.0.1)")
    netloc = parts.netloc.rpartition("@")[2]
    clean = urlunsplit((scheme, netloc, parts.path.rstrip("/"), "", ""))
    origin = Origin.of(clean)
    if origin is None:  # every check above passed, so this is our bug, not the user's input
        raise bad("the URL has no origin")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return ServiceRoot(clean, origin, shown, username, password)


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def limits_from(max_series: int | None, max_bytes: str | None, allow_http: bool) -> Limits:
    """Limits from the flags, falling back on HEMO_DICOMWEB_MAX_BYTES and the defaults."""
    if max_series is not None and max_series < 1:
        raise UserError(f"--max-series {max_series}: give at least 1 (default {DEFAULT_MAX_SERIES})")
    what, text = ("--max-response-bytes", max_bytes) if max_bytes else (MAX_BYTES_ENV, os.environ.get(MAX_BYTES_ENV))
    size = DEFAULT_MAX_BYTES
    if text:
        try:
            size = parse_size(text)
        except ValueError:
            raise UserError(f"{what} {text!r}: give a size in bytes, or with KiB/MiB/GiB, e.g. 2GiB "
                            f"(default {size_text(DEFAULT_MAX_BYTES)})") from None
    return Limits(max_series or DEFAULT_MAX_SERIES, size, allow_http)


def check_study_uids(studies: Sequence[str]) -> None:
    """--study values are DICOM UIDs (digits and dots): anything else would change the request path."""
    for position, study in enumerate(studies, start=1):
        if not is_uid(study):
            raise UserError(f"--study #{position} is not a DICOM UID (digits and dots, at most 64 characters); "
                            "check it (it is not printed)")


def warnings_for(root: ServiceRoot) -> list[str]:
    """The warning lines an import prints before it starts (redacted)."""
    lines = []
    if root.origin.scheme == "http":
        lines.append(f"warning: --allow-http: traffic with {root.shown} is not encrypted (patient data and "
                     "credentials in the clear); use https outside a trusted network")
    if root.username is not None:
        lines.append(f"warning: --dicomweb carries credentials, which other users of this machine can read in the "
                     f"process list; set {USERNAME_ENV}/{PASSWORD_ENV} (or {TOKEN_ENV}) instead")
    return lines


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


def _value(item: Any, tag: str) -> str | None:
    """A UID of a QIDO-RS result item, or None when it is missing or not a UID (a hostile answer
    must not put '../' or '?' into the next request's path)."""
    if not isinstance(item, dict):
        return None
    entry = item.get(tag)
    values = entry.get("Value") if isinstance(entry, dict) else None
    value = str(values[0]) if isinstance(values, list) and values else ""
    return value if is_uid(value) else None


def _failure(root: ServiceRoot, exc: Exception, what: str) -> Exception:
    """One line for a failed request, without the request's URL path (it holds UIDs); anything
    that is not a request's failure is returned as it is (a bug keeps its traceback)."""
    if isinstance(exc, requests.HTTPError) and exc.response is not None:
        code = exc.response.status_code
        if code in (401, 403):
            return UserError(f"DICOMweb server {root.shown} refused the {what} (HTTP {code}): it needs credentials "
                             f"({TOKEN_ENV}, or {USERNAME_ENV}/{PASSWORD_ENV}) or does not allow this client")
        if 400 <= code < 500:
            return UserError(f"DICOMweb server {root.shown} rejected the {what} (HTTP {code}); check --dicomweb (the "
                             "service root, e.g. https://host/dicom-web) and the study UIDs")
        return TransientError(f"DICOMweb server {root.shown} failed the {what} (HTTP {code}); retry later")
    if isinstance(exc, requests.JSONDecodeError):  # before RequestException: it is one too
        return UserError(f"DICOMweb server {root.shown} answered the {what} with something that is not DICOM JSON; "
                         "check that --dicomweb is the service root (e.g. https://host/dicom-web)")
    if isinstance(exc, requests.RequestException):
        return TransientError(f"DICOMweb server {root.shown} did not answer the {what} ({type(exc).__name__}); "
                              "check the URL and that the server runs, then retry")
    return exc


def _raise_failure(root: ServiceRoot, exc: Exception, what: str) -> None:
    failure = _failure(root, exc, what)
    if failure is exc:
        raise exc
    raise failure from exc


def _page(client: Any, root: ServiceRoot, study: str | None, filters: dict[str, str], offset: int) -> list:
    try:
        page = client.search_for_series(study_instance_uid=study, search_filters=dict(filters), limit=PAGE_SIZE,
                                        offset=offset)
    except (UserError, TransientError):
        raise
    except Exception as exc:
        _raise_failure(root, exc, "search (QIDO-RS)")
    if not isinstance(page, list):
        raise UserError(f"DICOMweb server {root.shown} answered the search (QIDO-RS) with something that is not a "
                        "list of series; check that --dicomweb is the service root")
    return page


def _search(client: Any, session: Any, root: ServiceRoot, study: str | None, filters: dict[str, str],
            limits: Limits, found: dict[tuple[str, str], None], fetched: Fetched) -> int:
    """Page through one QIDO-RS search with our own offset, adding (study, series) keys to
    ``found``; return how many series this search found. Bounded: every non-empty page must hold a
    series this search has not seen before, the total stays within ``max_series`` and the pages
    within ``max_pages``."""
    seen: set[tuple[str, str]] = set()
    offset = 0
    for number in range(1, limits.max_pages + 1):
        page = _page(client, root, study, filters, offset)
        fetched.searches += 1
        if not page:
            return len(seen)
        keys = [(study or _value(item, STUDY_UID), _value(item, SERIES_UID)) for item in page]
        usable = {(st, se) for st, se in keys if st and se}  # an item without valid UIDs cannot be retrieved
        if not usable:
            raise UserError(f"DICOMweb server {root.shown} answered page {number} of the search with no series that "
                            "has a valid StudyInstanceUID and SeriesInstanceUID; it is not a conformant QIDO-RS "
                            "server, or --dicomweb is not its service root")
        new = usable - seen
        if not new:
            raise UserError(f"DICOMweb server {root.shown} answered page {number} of the search (offset {offset}) with "
                            "no series it had not returned before: it ignores the QIDO-RS offset. Stopped after "
                            f"{number} requests instead of paging forever; narrow the search to one page of "
                            f"{PAGE_SIZE} (--study UID, a later --since) or have the server fixed")
        seen |= new
        found.update(dict.fromkeys(sorted(new)))
        if len(found) > limits.max_series:
            raise UserError(f"the search on {root.shown} matched more than {limits.max_series} series (--max-series); "
                            "narrow it (a later --since, --modality, or --study UIDs) or raise --max-series")
        more = len(page) == PAGE_SIZE or (len(page) < PAGE_SIZE and bool(session.last_warning))
        if not more:  # short (and no "more results" warning), or longer than asked: the server sent all
            return len(seen)
        offset += len(page)
    raise UserError(f"DICOMweb server {root.shown} still had results after {limits.max_pages} pages of the search; "
                    "stopped there. Narrow the search (--study UID, a later --since) or raise --max-series")


def find_series(client: Any, session: Any, root: ServiceRoot, studies: Sequence[str], modality: str | None,
                since: str | None, limits: Limits, fetched: Fetched) -> list[tuple[str, str]]:
    """(study UID, series UID) of every series to import, found by paged QIDO-RS searches."""
    filters = {"Modality": modality} if modality else {}
    found: dict[tuple[str, str], None] = {}
    if studies:
        for position, study in enumerate(studies, start=1):
            if not _search(client, session, root, study, filters, limits, found, fetched):
                raise UserError(f"--study #{position}: the server has no {modality or ''} series for this study "
                                "UID; check the UID (it is not printed) and --modality")
    else:
        filters["StudyDate"] = f"{check_since(since or '')}-"
        _search(client, session, root, None, filters, limits, found, fetched)
    return sorted(found)


class _Parts:
    """Writes each part of a multipart/related answer to its own file as it streams in (never a
    whole series in memory); a part cut short stays a short file, which the scan counts as unreadable."""

    def __init__(self, folder: Path, root: ServiceRoot):
        self.folder, self.root, self.count = folder, root, 0
        self._handle: Any = None

    def begin(self) -> None:
        self.end()
        if self.count >= MAX_PARTS:
            raise UserError(f"DICOMweb server {self.root.shown} sent more than {MAX_PARTS} instances in one series; "
                            "refused (not a CT series)")
        self._handle = (self.folder / f"{self.count:05d}.dcm").open("wb")
        self.count += 1

    def data(self, data: bytes, start: int, end: int) -> None:
        if self._handle is None:
            self.begin()
        self._handle.write(data[start:end])

    def end(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def _boundary(content_type: str) -> tuple[str, str | None]:
    """(media type, multipart boundary) of a Content-Type header, quoted parameters included."""
    message = Message()
    message["Content-Type"] = content_type or "application/octet-stream"
    boundary = message.get_param("boundary")
    return message.get_content_type(), boundary if isinstance(boundary, str) and boundary else None


def save_series(response: Any, folder: Path, root: ServiceRoot) -> int:
    """Write the instances of one WADO-RS answer into ``folder``, one file each, streaming; return the count."""
    media, boundary = _boundary(str(response.headers.get("Content-Type", "")))
    folder.mkdir(parents=True)
    parts = _Parts(folder, root)
    try:
        if media == "application/dicom":  # one instance, not wrapped (some servers do that)
            parts.begin()
            for chunk in response.iter_content(chunk_size=1 << 20):
                parts.data(chunk, 0, len(chunk))
            return parts.count
        if media != "multipart/related" or boundary is None:
            raise UserError(f"DICOMweb server {root.shown} answered a retrieve (WADO-RS) with {media!r}, not "
                            "multipart/related DICOM; check that --dicomweb is the service root")
        parser = MultipartParser(boundary, {"on_part_begin": parts.begin, "on_part_data": parts.data,
                                            "on_part_end": parts.end})
        for chunk in response.iter_content(chunk_size=1 << 20):
            parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        raise TransientError(f"DICOMweb server {root.shown} sent a malformed multipart answer to a retrieve (WADO-RS); "
                             "retry later (a server that always does this is not DICOMweb-conformant)") from exc
    finally:
        parts.end()
    return parts.count


def _auth(root: ServiceRoot) -> Any:
    """Credentials from the environment first, then from the URL's userinfo; None without any."""
    token = os.environ.get(TOKEN_ENV)
    if token:
        return _Bearer(token)
    user, password = os.environ.get(USERNAME_ENV), os.environ.get(PASSWORD_ENV)
    if user or password:
        return requests.auth.HTTPBasicAuth(user or "", password or "")
    if root.username is not None:
        return requests.auth.HTTPBasicAuth(root.username, root.password or "")
    return None


class _Bearer:
    """``Authorization: Bearer <token>`` (requests' AuthBase protocol: called on each prepared request)."""

    def __init__(self, token: str):
        self._token = token

    def __call__(self, request: Any) -> Any:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request

    def __repr__(self) -> str:
        return "_Bearer(***)"


def _session(root: ServiceRoot, limits: Limits) -> Any:
    attempts = os.environ.get(RETRIES_ENV, "5")
    if not attempts.isdigit() or int(attempts) < 1:
        raise UserError(f"{RETRIES_ENV}={attempts!r}: give a whole number of attempts, at least 1 (default 5)")
    session = OneOriginSession(
        root.origin, f"DICOMweb server {root.shown}", max_bytes=limits.max_response_bytes,
        json_max_bytes=SEARCH_MAX_BYTES, attempts=int(attempts), timeout=TIMEOUT,
        cap_hint=f"If a series is really that large raise --max-response-bytes (or {MAX_BYTES_ENV}); "
                 f"default {size_text(DEFAULT_MAX_BYTES)}",
        redirect_hint="Give --dicomweb the service root that answers without a redirect")
    session.auth = _auth(root)
    return session


def retrieve(session: Any, root: ServiceRoot, study: str, series: str, folder: Path, position: int) -> int:
    """WADO-RS of one series, streamed into ``folder``; the number of instances written."""
    what = f"retrieve (WADO-RS) of series #{position}"
    try:
        response = session.get(f"{root.url}/studies/{study}/series/{series}", headers={"Accept": _ACCEPT_DICOM},
                               stream=True)
        with response:
            response.raise_for_status()
            return save_series(response, folder, root)
    except (UserError, TransientError):
        raise
    except Exception as exc:
        _raise_failure(root, exc, what)
    raise AssertionError("unreachable")


def _client(root: ServiceRoot, session: Any) -> Any:
    """dicomweb-client over our session, which does the retries (connection errors too)."""
    client = DICOMwebClient(url=root.url, session=session, timeout=TIMEOUT)
    client.set_http_retry_params(retry=False)
    client.host = urlsplit(root.url).netloc  # its Host header: dicomweb-client's parse drops the port
    # and cuts an IPv6 literal at the first ':'; the netloc holds no userinfo (parse_service_root)
    return client


def fetch(root: ServiceRoot, dest: Path, studies: Sequence[str] = (), modality: str | None = "CT",
          since: str | None = None, limits: Limits = Limits()) -> Fetched:
    """Retrieve the chosen series into ``dest`` (opaque file names) and count them."""

    if not studies and not since:
        raise UserError("--dicomweb needs --study UID (repeatable) or a query: --modality CT --since YYYYMMDD")
    check_study_uids(studies)
    for line in warnings_for(root):
        print(line, file=sys.stderr)
    return _retrieve_all(root, limits, dest, lambda session, result: find_series(
        _client(root, session), session, root, studies, modality, since, limits, result))


def _retrieve_all(root: ServiceRoot, limits: Limits, dest: Path,
                  choose: Callable[[Any, Fetched], Sequence[tuple[str, str]]]) -> Fetched:
    """One session: the (study, series) pairs ``choose`` names (searching with the session where
    it must), each retrieved into ``dest/seriesNNNNN``; counts, bytes and time in the result."""
    started = time.perf_counter()
    result = Fetched()
    with _silenced():
        session = _session(root, limits)
        with session:
            try:
                for number, (study, series) in enumerate(choose(session, result)):
                    result.instances += retrieve(session, root, study, series, dest / f"series{number:05d}",
                                                 number + 1)
                    result.series += 1
            finally:
                result.bytes = session.received
    result.seconds = time.perf_counter() - started
    return result


def retrieve_series(root: ServiceRoot, series: Sequence[tuple[str, str]], dest: Path,
                    limits: Limits = Limits(), warn: bool = True) -> Fetched:
    """WADO-RS of the given (study, series) pairs into ``dest`` (opaque folder names), with the
    import's credential, TLS, redirect and size rules: the series `hemo report` must reference,
    read from the PACS they are filed in instead of a folder."""
    for position, pair in enumerate(series, start=1):  # UIDs go into the request path
        if not all(is_uid(uid) for uid in pair):
            raise UserError(f"series #{position} to retrieve has a study or series UID that is not a DICOM UID (digits "
                            "and dots, at most 64 characters); check the --mapping file (values are not printed)")
    if warn:
        for line in warnings_for(root):
            print(line, file=sys.stderr)
    return _retrieve_all(root, limits, dest, lambda session, result: series)


@dataclass
class Stored:
    instances: int = 0
    failed: int = 0
    seconds: float = 0.0


def store(root: ServiceRoot, datasets: Sequence[Any], limits: Limits = Limits(), warn: bool = True) -> Stored:
    """STOW-RS of ``datasets`` (one request), with the import's credential, TLS, redirect and size
    rules (``warn``: print the URL's warnings, once per run). Objects with derived UIDs make a
    second store of the same results add nothing (a PACS keeps or replaces the instance); a
    server's per-instance failures are counted (FailedSOPSequence), never named (UIDs)."""
    for line in warnings_for(root) if warn else ():
        print(line, file=sys.stderr)
    started = time.perf_counter()
    result = Stored()
    with _silenced():
        session = _session(root, limits)
        with session:
            client = _client(root, session)
            try:
                response = client.store_instances(datasets=list(datasets))
            except Exception as exc:  # noqa: BLE001 - _raise_failure re-raises what is not a request's failure
                _raise_failure(root, exc, "store (STOW-RS)")
    failed = len(response.get("FailedSOPSequence", None) or []) if response is not None else 0
    result.instances, result.failed = len(datasets) - failed, failed
    result.seconds = time.perf_counter() - started
    return result
