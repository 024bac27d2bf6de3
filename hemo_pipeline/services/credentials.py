"""Credentials for a step from a secrets file, never from the container's configuration.

Why a file: a value passed as a container's environment (DockerOperator ``environment=``, a
pod's literal ``env``) is shown by ``docker inspect``, ``kubectl describe`` and the task log that
prints the operator's arguments. The stack instead mounts one private file into each step
container (a Docker volume the ``secrets-init`` service fills, or a Kubernetes Secret) and names
it by a variable that holds only its path::

    HEMO_SECRETS_FILE=/run/hemo-secrets/hemo-step.env

``hemo`` reads it once at start (:func:`load_secrets_file`, called by ``hemo_pipeline.cli.main``):
``KEY=value`` lines, only the keys in :data:`KNOWN_KEYS`, each put into this process's
environment, where MLflow (MLFLOW_TRACKING_USERNAME/PASSWORD) and boto (AWS_*) look for them. A
file that is missing, unreadable, malformed, has an unknown key, or that other users may read or
change is refused with one line (exit 2) that names the file and the line number, never a value.

Standard library only: it runs before any step's imports.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import MutableMapping
from pathlib import Path

from hemo_pipeline.services.errors import UserError

SECRETS_FILE_ENV = "HEMO_SECRETS_FILE"
KNOWN_KEYS = frozenset({
    "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL",
    "HEMO_DICOMWEB_TOKEN", "HEMO_DICOMWEB_USERNAME", "HEMO_DICOMWEB_PASSWORD",
})
"""What a secrets file may set: credentials and the S3 endpoint that goes with them. Nothing else,
so a file cannot switch off a safety setting (MLFLOW_ALLOW_PICKLE_DESERIALIZATION, ...)."""
UNSAFE_MODE = stat.S_IRWXO | stat.S_IWGRP
"""Refused permission bits: any access by others, or group write. Group read is allowed: a
Kubernetes Secret volume with an fsGroup is 0440 whatever defaultMode says."""
MAX_BYTES = 64 * 1024
_LINE = re.compile(r"(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)")


def load_secrets_file(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Read the file named by HEMO_SECRETS_FILE (if set) into ``environ`` (default: os.environ);
    return the keys it set (names only: the values are never returned, printed or logged)."""
    env = os.environ if environ is None else environ
    name = env.get(SECRETS_FILE_ENV)
    if not name:
        return []
    values = read_secrets_file(Path(name))
    env.update(values)
    return sorted(values)


def read_secrets_file(path: Path) -> dict[str, str]:
    """The ``KEY=value`` pairs of a private secrets file (see the module docstring); UserError
    naming the file, and for a bad line its number, when it cannot be used."""
    hint = f"{SECRETS_FILE_ENV}={path}"
    try:
        info = path.stat()
    except FileNotFoundError:
        raise UserError(f"{hint}: no such file; mount the step secrets there (docker/compose.yaml: the secrets-init "
                        f"service fills the volume from docker/.env) or unset {SECRETS_FILE_ENV}") from None
    except PermissionError:
        raise UserError(_denied(hint)) from None
    except OSError as exc:
        raise UserError(f"{hint}: cannot be read ({exc.strerror}); give the step's user access to it") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{hint}: not a regular file; name the secrets file itself")
    if info.st_mode & UNSAFE_MODE:
        raise UserError(f"{hint}: other users may read or change it (mode {stat.S_IMODE(info.st_mode):04o}); "
                        f"refused: make it private (chmod 600 {path}) and change the credentials it held")
    if info.st_size > MAX_BYTES:
        raise UserError(f"{hint}: {info.st_size} bytes is not a secrets file (at most {MAX_BYTES}); name the right file")
    try:
        text = path.read_bytes().decode("utf-8")
    except PermissionError:
        raise UserError(_denied(hint)) from None
    except UnicodeDecodeError:
        raise UserError(f"{hint}: not UTF-8 text; write it as KEY=value lines") from None
    except OSError as exc:
        raise UserError(f"{hint}: cannot be read ({exc.strerror})") from None
    return _parse(text, hint)


def _denied(hint: str) -> str:
    return (f"{hint}: permission denied for uid {os.getuid()}; the file (and its folders) must be readable by the "
            "user the step runs as (HEMO_CONTAINER_UID)")


def _parse(text: str, hint: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:  # the line may hold a secret: only its number is named
            raise UserError(f"{hint}: line {number} is not KEY=value; fix that line")
        key, value = match.group(1), _unquoted(match.group(2).strip())
        if key not in KNOWN_KEYS:
            raise UserError(f"{hint}: line {number} sets {key}, which a secrets file may not set; allowed: "
                            f"{', '.join(sorted(KNOWN_KEYS))}")
        if not value:
            raise UserError(f"{hint}: line {number} gives {key} no value; set it or remove the line")
        values[key] = value
    return values


def _unquoted(value: str) -> str:
    """``'x'`` / ``"x"`` -> ``x`` (as docker/.env and shell files write them); anything else as is."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value
