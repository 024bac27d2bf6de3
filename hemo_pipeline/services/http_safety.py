"""HTTP to the one server a user named, and nothing more: redacted URLs, one origin, capped bodies.

Used where a step talks to a server given on the command line (a PACS over DICOMweb):

* :func:`redact_url` is the only way a URL reaches a message: userinfo (``user:pass@``) and every
  query or fragment value whose key looks like a secret (token, key, password, signature...)
  become ``***``. It works on text, so a malformed URL is redacted too.
* :class:`OneOriginSession` is a :class:`requests.Session` that sends nothing to another scheme,
  host or port than the service root's: the first request and every redirect are checked in
  :meth:`~OneOriginSession.send`, which ``requests`` calls for each hop, so a redirect to another
  server is refused before a byte (or a credential) goes there. Same-origin redirects are followed.
* Every response body is counted while it is read (:class:`_CappedBody` in place of urllib3's raw
  response): past the cap the connection is closed and :class:`ResponseTooLarge` raised, with or
  without a Content-Length, so a chunked response that never ends cannot fill the memory or the
  disk. JSON answers (searches) get a tighter cap than DICOM ones.
* Every request has a timeout; connection errors and 408/429/503/504 are retried with back-off by
  urllib3's ``Retry`` (a server's Retry-After is not obeyed: it could ask for a week).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from hemo_pipeline.services.errors import UserError

REDACTED = "***"
SECRET_KEYS = re.compile(r"token|key|secret|pass|pwd|auth|sig|credential|session|code|jwt|bearer", re.IGNORECASE)
"""Query/fragment parameter names whose values are never shown."""
_PARAM = re.compile(r"([?&#;])([^=&#;]*)=([^&#;]*)")
RETRY_STATUSES = (408, 429, 503, 504)


def redact_url(url: str) -> str:
    """``url`` with its userinfo and secret-looking query/fragment values replaced by ``***``.

    Text only, no parsing, so a malformed URL is redacted too: everything between ``//`` (or the
    start) and the last ``@`` goes, which also covers a password holding ``/``, ``?``, ``#`` or a
    space (a URL parser would cut the authority short there and show the rest as host or path)."""
    at = url.rfind("@")
    if at >= 0:
        start = url.find("//")
        start = start + 2 if 0 <= start < at else 0
        url = f"{url[:start]}{REDACTED}{url[at:]}"

    def value(match: re.Match[str]) -> str:
        sep, key, val = match.groups()
        return f"{sep}{key}={REDACTED}" if SECRET_KEYS.search(key) and val else match.group(0)

    return _PARAM.sub(value, url)


@dataclass(frozen=True)
class Origin:
    """Scheme, host and port: what a request may not change (RFC 6454's origin)."""

    scheme: str
    host: str
    port: int

    @classmethod
    def of(cls, url: str) -> Origin | None:
        """The origin of ``url``, or None when it has none that can be compared."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            return None
        return cls(scheme, parts.hostname.lower(), port or (443 if scheme == "https" else 80))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


class ResponseTooLarge(UserError):
    """A response body over the byte cap; reading stopped there (exit 2: raise the cap or fix the server)."""


class RedirectRefused(UserError):
    """A request (a redirect) to another origin than the service root's; nothing was sent there."""


def size_text(n: int) -> str:
    """Bytes as the largest binary unit that divides them, e.g. 2 GiB, 1536 KiB."""
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} bytes"


_SIZE = re.compile(r"(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}


def parse_size(text: str) -> int:
    """``2GiB``, ``512 MiB``, ``64M``, ``1048576`` -> bytes (binary units); ValueError otherwise."""
    match = _SIZE.fullmatch(text.strip())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size")
    return int(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


class _CappedBody:
    """urllib3's response, counted as requests reads it (``stream``/``read``, decoded bytes, so a
    compressed bomb counts at its real size); past ``cap`` it closes the connection and raises."""

    def __init__(self, raw: Any, cap: int, on_read: Callable[[int], None], too_large: Callable[[], Exception]):
        self._raw, self._cap, self._on_read, self._too_large = raw, cap, on_read, too_large
        self._seen = 0

    def _count(self, n: int) -> None:
        self._seen += n
        self._on_read(n)
        if self._seen > self._cap:
            self._raw.close()  # nothing more is read, and the connection is not reused
            raise self._too_large()

    def stream(self, amt: int = 1 << 16, decode_content: bool | None = None) -> Iterator[bytes]:
        for chunk in self._raw.stream(amt, decode_content=decode_content):
            self._count(len(chunk))
            yield chunk

    def read(self, amt: int | None = None, **kwargs: Any) -> bytes:
        if amt is None:  # never one unbounded read
            return b"".join(iter(lambda: self.read(1 << 20, **kwargs), b""))
        data = self._raw.read(amt, **kwargs)
        self._count(len(data))
        return data

    def __getattr__(self, name: str) -> Any:  # headers, close, release_conn, _original_response...
        return getattr(self._raw, name)


class _CappingAdapter(HTTPAdapter):
    """Wraps every response it builds (redirect hops included) in a :class:`_CappedBody`; a
    Content-Length over the cap is refused before the body is read."""

    def __init__(self, session: OneOriginSession, retries: Retry):
        self._session = session
        super().__init__(max_retries=retries)

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        response = super().build_response(req, resp)
        cap = self._session.cap_for(req)
        declared = str(response.headers.get("Content-Length", "")).strip()
        if declared.isdigit() and int(declared) > cap:
            resp.close()
            raise self._session.too_large(cap)
        response.raw = _CappedBody(response.raw, cap, self._session.count, lambda: self._session.too_large(cap))
        return response


class OneOriginSession(requests.Session):
    """A session bound to one origin, with byte caps, timeouts and retries (module docstring).

    ``name`` says who the server is in messages (a redacted URL), ``cap_hint`` how to raise the
    cap, ``redirect_hint`` what to do about a refused redirect. JSON requests (by their Accept
    header) are capped at ``json_max_bytes``, others at ``max_bytes``. ``received`` counts the body
    bytes read; ``last_warning`` keeps the Warning header of the last response (QIDO-RS: more
    results than the server returns at once)."""

    def __init__(self, origin: Origin, name: str, *, max_bytes: int, json_max_bytes: int, attempts: int = 1,
                 timeout: float | tuple[float, float] = 20.0, cap_hint: str = "", redirect_hint: str = "",
                 max_redirects: int = 5):
        super().__init__()
        self.origin, self.name, self.cap_hint, self.redirect_hint = origin, name, cap_hint, redirect_hint
        self.max_bytes, self.json_max_bytes, self.timeout = max_bytes, min(json_max_bytes, max_bytes), timeout
        self.max_redirects = max_redirects
        self.received = 0
        self.last_warning: str | None = None
        retries = Retry(total=attempts - 1, connect=attempts - 1, read=attempts - 1, status=attempts - 1, other=0,
                        status_forcelist=RETRY_STATUSES, allowed_methods=frozenset({"GET", "HEAD"}),
                        backoff_factor=1.0, backoff_max=30.0, raise_on_status=False,
                        respect_retry_after_header=False)
        adapter = _CappingAdapter(self, retries)
        for prefix in list(self.adapters):
            self.mount(prefix, adapter)

    def cap_for(self, request: requests.PreparedRequest) -> int:
        return self.json_max_bytes if "json" in str(request.headers.get("Accept", "")).lower() else self.max_bytes

    def count(self, n: int) -> None:
        self.received += n

    def too_large(self, cap: int) -> ResponseTooLarge:
        return ResponseTooLarge(f"{self.name} sent more than {size_text(cap)} in one response (the byte cap); "
                                f"stopped reading there. {self.cap_hint}".strip())

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        """Every hop passes here (requests' redirect loop calls ``send``): refuse another origin
        before anything is sent, and give every request a timeout."""
        target = Origin.of(str(request.url))
        if target != self.origin:
            shown = str(target) if target else "an unusable URL"
            raise RedirectRefused(f"{self.name} redirected a request to {redact_url(shown)}, another scheme, host or "
                                  "port; not followed (patient data and credentials stay with the server you named). "
                                  f"{self.redirect_hint}".strip())
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.timeout
        response = super().send(request, **kwargs)
        self.last_warning = response.headers.get("Warning")
        return response
