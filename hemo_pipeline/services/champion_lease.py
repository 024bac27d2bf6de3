"""The one promotion lease: every write to ``@champion`` (and ``@reference``) happens while holding it.

Why a lease and not a read-compare-write: MLflow has no conditional alias update, so two gates
that both re-read ``@champion`` before writing would both pass and the last writer would win. The
lease turns that into "one writer at a time" using the only atomic primitive the registry offers:

* **Acquire** = ``create_registered_model(LEASE_MODEL, tags={holder, token, acquired_at,
  expires_at})``. Registered-model names are the primary key of the backend database
  (``registered_models.name``), so of two concurrent creates exactly one commits and the other
  gets ``RESOURCE_ALREADY_EXISTS`` (MLflow's SQLAlchemy store turns the ``IntegrityError`` of the
  insert into that code; SQLite serialises the two writes, PostgreSQL blocks the second insert on
  the unique index until the first commits). The REST API answers the same code. (MLflow 3's
  store reads the existing model to word that error, so a create racing a release can also get
  ``RESOURCE_DOES_NOT_EXIST``: also "try again".)
* **Wait**: while someone else holds it, poll with small jittered back-off for up to ``wait_s``
  (default 120 s, or ``HEMO_LEASE_WAIT_S``), then raise :class:`LeaseBusy` (exit 3) naming the
  holder and since when.
* **Break a stale lease** (``expires_at`` passed: its holder died): rename it to
  ``<lease>.broken-<its token>``. A rename is one atomic update of the primary key, so of several
  breakers only one succeeds (the others get ``RESOURCE_DOES_NOT_EXIST`` or, for the same target
  name, ``RESOURCE_ALREADY_EXISTS``) and retry. The target is named after the stale token, and the
  breaker checks the renamed model still carries that token: if a live lease replaced the stale one
  between our read and our rename, it is renamed straight back.
* **Release** (in ``finally``): delete the lease only if its token tag is still ours.

Limits, said plainly: MLflow offers no conditional rename/delete, so breaking and releasing are
check-then-act. Besides a holder that ran past its TTL (default 300 s for a few HTTP calls) or
clocks that differ by more than the TTL, a breaker whose rename arrives late (it read the stale
lease, another breaker meanwhile removed it and took a fresh one) renames a *live* lease away; it
renames it straight back, but in that window a third writer can take the name. So
:func:`hemo_pipeline.services.registry.move_champion` checks that its lease is still the one under
the name just before it writes and before it records, and re-reads ``@champion`` after writing:
the remaining window is one HTTP call wide, after a stale lease, under load. Generation-numbered
leases (break by creating the next generation, never by renaming) would close it; not done yet.
The MLflow **file store** (``./mlruns``, a path as tracking URI) is
not atomic: its ``create_registered_model`` checks that the folder is absent and then creates it
(``os.makedirs(..., exist_ok=True)``), so two processes can both "create" the lease there. This
project uses the SQLAlchemy store (embedded ``sqlite:///mlflow.db`` or the stack's PostgreSQL
behind the tracking server), where the lease is atomic.

Permissions (basic-auth stack, MLflow 3 RBAC): creating a registered model needs no grant and
makes the creator MANAGE on it (a rename carries that grant along, a delete sweeps every per-user
grant on the name), so a writer can always take, release and break its own account's lease.
``docker/mlflow_init.py`` adds two admin-made roles, which no delete sweeps: the writer MANAGE on
the lease name (it can break a stale lease another account left) and the reader DENY on it (a
read-only account cannot take the lease and block promotions). Without that role a stale lease of
another account ends in a UserError asking an admin to delete it.

Environment: ``HEMO_LEASE_WAIT_S`` (seconds, default 120): how long a step waits for a lease held
by someone else before it gives up with exit 3.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from hemo_pipeline.services import tracking
from hemo_pipeline.services.errors import TransientError, UserError

LEASE_MODEL = "hemorrhage-classifier.champion-lease"
"""``registry.MODEL_NAME + '.champion-lease'`` (a test keeps the two equal; the registry imports
this module, so it cannot import the registry)."""
WAIT_ENV = "HEMO_LEASE_WAIT_S"
DEFAULT_WAIT_S = 120.0
DEFAULT_TTL_S = 300.0
_RETRYABLE = ("TEMPORARILY_UNAVAILABLE", "INTERNAL_ERROR", "REQUEST_LIMIT_EXCEEDED")
"""A SQLite store answers a write that lost the database lock with one of these: try again."""

_log = logging.getLogger(__name__)


class LeaseBusy(TransientError):
    """Someone else held the promotion lease for the whole wait: nothing was changed (exit 3)."""


@dataclass(frozen=True)
class Lease:
    """One holding of the lease, as its tags record it."""

    name: str
    holder: str
    token: str
    acquired_at: float
    expires_at: float

    def expired(self, at: float | None = None) -> bool:
        return (time.time() if at is None else at) >= self.expires_at

    def since(self) -> str:
        return _iso(self.acquired_at)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def _epoch(text: str | None) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except (TypeError, ValueError):
        return None


def _code(exc: MlflowException) -> str:
    return str(getattr(exc, "error_code", ""))


def wait_seconds(wait_s: float | None = None) -> float:
    """``wait_s`` if given, else ``HEMO_LEASE_WAIT_S``, else 120 s."""
    if wait_s is not None:
        return float(wait_s)
    text = os.environ.get(WAIT_ENV, "")
    if not text:
        return DEFAULT_WAIT_S
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{WAIT_ENV}={text!r} is not a number of seconds; unset it or set e.g. {WAIT_ENV}=120") from None
    if value < 0:
        raise UserError(f"{WAIT_ENV}={text!r} is negative; unset it or set e.g. {WAIT_ENV}=120")
    return value


def _client() -> Any:
    return mlflow.MlflowClient(tracking_uri=tracking.tracking_uri())


def read(client: Any, name: str = LEASE_MODEL, ttl_s: float = DEFAULT_TTL_S) -> Lease | None:
    """The lease recorded under ``name``, or None when nobody holds it. A model without readable
    tags (made by hand) expires ``ttl_s`` after it was created."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if _code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    tags = dict(model.tags or {})
    created = (model.creation_timestamp or 0) / 1000
    acquired = _epoch(tags.get("acquired_at")) or created
    expires = _epoch(tags.get("expires_at")) or created + ttl_s
    return Lease(name, tags.get("holder", "unknown"), tags.get("token", ""), acquired, expires)


def _try_create(client: Any, holder: str, ttl_s: float) -> Lease | None:
    """One atomic attempt: the new lease, or None when the name is taken."""
    start = time.time()
    lease = Lease(LEASE_MODEL, holder, uuid.uuid4().hex, start, start + ttl_s)
    tags = {"holder": holder, "token": lease.token, "acquired_at": _iso(lease.acquired_at),
            "expires_at": _iso(lease.expires_at)}
    try:
        client.create_registered_model(LEASE_MODEL, tags=tags, description=(
            "Promotion lease of @champion/@reference (hemo_pipeline/services/champion_lease.py): held while "
            "one step moves an alias; deleted when it is done; broken after expires_at if its holder died."))
        return lease
    except MlflowException as exc:
        if _code(exc) == "RESOURCE_ALREADY_EXISTS":
            current = read(client, ttl_s=ttl_s)  # a retried request whose first try did commit
            return lease if current is not None and current.token == lease.token else None
        if _code(exc) in ("RESOURCE_DOES_NOT_EXIST", *_RETRYABLE):
            # The SQL store reads the existing model to word its error (released meanwhile), or the
            # request failed after committing: ours if the lease carries our token.
            current = read(client, ttl_s=ttl_s)
            return lease if current is not None and current.token == lease.token else None
        raise


def break_stale(client: Any, stale: Lease) -> bool:
    """Remove ``stale`` (an expired lease) if it is still the one under the lease name; True if
    this call removed it. Only one of several concurrent breakers can rename it away; the others
    get False (and wait or retry like any acquirer)."""
    target = f"{LEASE_MODEL}.broken-{stale.token or uuid.uuid4().hex}"
    try:
        client.rename_registered_model(LEASE_MODEL, target)
    except MlflowException as exc:
        if _code(exc) == "PERMISSION_DENIED":
            raise UserError(f"the promotion lease {LEASE_MODEL} at {tracking.tracking_uri()} expired at "
                            f"{_iso(stale.expires_at)} (held by {stale.holder}) but this account may not remove it "
                            "(it was taken by another MLflow account): ask an MLflow admin to delete the registered "
                            f"model {LEASE_MODEL}, then run the step again") from exc
        # RESOURCE_DOES_NOT_EXIST / _ALREADY_EXISTS, or BAD_REQUEST (the SQL store's StaleDataError
        # when the row was renamed under us): another breaker or the holder's release was first.
        return False
    taken = read(client, target)
    if taken is not None and taken.token != stale.token:
        # A live lease replaced the stale one between our read and our rename: give it back.
        try:
            client.rename_registered_model(target, LEASE_MODEL)
        except MlflowException as exc:
            _log.warning("champion lease: could not restore %s's lease taken by mistake (%s)", taken.holder,
                         _code(exc))
        return False
    with contextlib.suppress(MlflowException):
        client.delete_registered_model(target)
    _log.warning("champion lease: broke %s's lease (held since %s, expired %s)", stale.holder, stale.since(),
                 _iso(stale.expires_at))
    return True


def acquire(holder: str, ttl_s: float = DEFAULT_TTL_S, wait_s: float | None = None) -> Lease:
    """Take the lease, waiting up to ``wait_s`` (see :func:`wait_seconds`) for its holder."""
    client = _client()
    wait = wait_seconds(wait_s)
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        lease = _try_create(client, holder, ttl_s)
        if lease is not None:
            return lease
        current = read(client, ttl_s=ttl_s)
        if current is not None and current.expired() and break_stale(client, current):
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            if current is None:
                raise LeaseBusy(f"could not take the promotion lease ({LEASE_MODEL} at {tracking.tracking_uri()}) "
                                f"within {wait:g} s (the server kept refusing the write); nothing was changed: "
                                "run the step again")
            raise LeaseBusy(
                f"the promotion lease ({LEASE_MODEL} at {tracking.tracking_uri()}) is held by {current.holder} since "
                f"{current.since()} (expires {_iso(current.expires_at)}); waited {wait:g} s and changed nothing: "
                f"run the step again when it is done, or wait longer with {WAIT_ENV}; a dead holder's lease is "
                "broken automatically once it expires")
        time.sleep(min(left, delay * random.uniform(0.5, 1.0)))
        delay = min(delay * 2, 1.0)


def release(lease: Lease) -> bool:
    """Delete the lease if it is still ours (its token tag); True if it was deleted."""
    client = _client()
    current = read(client)
    if current is None or current.token != lease.token:
        _log.warning("champion lease: %s's lease was no longer held at release (it ran past its %s expiry)",
                     lease.holder, _iso(lease.expires_at))
        return False
    try:
        client.delete_registered_model(LEASE_MODEL)
    except MlflowException as exc:
        if _code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise
        return False
    return True


def holds(lease: Lease) -> bool:
    """Whether ``lease`` is still the lease under its name (nobody broke it)."""
    current = read(_client())
    return current is not None and current.token == lease.token


def default_holder(what: str) -> str:
    """``<who> on <host> pid <pid>: <what>``: enough for the busy message to say whom to ask."""
    user = os.environ.get("HEMO_USER") or os.environ.get("USER") or "unknown"
    return f"{user} on {socket.gethostname()} pid {os.getpid()}: {what}"[:250]


@contextlib.contextmanager
def champion_lease(holder: str, ttl_s: float = DEFAULT_TTL_S, wait_s: float | None = None) -> Iterator[Lease]:
    """Hold the promotion lease for the ``with`` body; released (if still ours) however it ends."""
    lease = acquire(holder, ttl_s, wait_s)
    try:
        yield lease
    finally:
        try:
            release(lease)
        except MlflowException as exc:  # never hide the body's own error; the lease expires by itself
            _log.warning("champion lease: could not release %s's lease (%s); it expires at %s", lease.holder,
                         _code(exc) or type(exc).__name__, _iso(lease.expires_at))
