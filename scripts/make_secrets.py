#!/usr/bin/env python3
"""Write docker/.env for the production stack with a fresh random value for every secret.

    make secrets              # = python3 scripts/make_secrets.py
    make secrets FORCE=1      # replace an existing docker/.env (every secret changes)

docker/.env.example is the template: each ``KEY=`` line with an empty value is a secret and gets
a new random value; every other line (comments, user names, folders) is copied as it is. Values:

* ``AIRFLOW_FERNET_KEY``: urlsafe base64 of 32 random bytes (what ``cryptography.fernet`` takes);
* every other secret: 24 random bytes as urlsafe base64 (32 characters of ``A-Za-z0-9_-``, so
  they sit in URLs such as the PostgreSQL connection string unescaped, and fit MinIO's 8-40
  character secret keys).

The file is created with mode 0600 from its first byte (never readable by others, not even
briefly) and written completely before it takes the final name. An existing docker/.env is never
overwritten unless ``--force``: it holds the passwords the running stack's databases and users
were created with. Nothing secret is printed. Standard library only: it runs before any venv.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docker" / ".env.example"
TARGET = REPO / "docker" / ".env"
_ASSIGNMENT = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)=(.*)")


def fernet_key() -> str:
    """A Fernet key: urlsafe base64 of 32 random bytes (44 characters)."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def secret_value(name: str) -> str:
    return fernet_key() if name.endswith("FERNET_KEY") else secrets.token_urlsafe(24)


def render(template: str) -> tuple[str, list[str]]:
    """The .env text for ``template`` and the names of the secrets it filled."""
    lines, filled = [], []
    for line in template.splitlines():
        match = _ASSIGNMENT.fullmatch(line.strip())
        if match and not match.group(2).strip():
            name = match.group(1)
            lines.append(f"{name}={secret_value(name)}")
            filled.append(name)
        else:
            lines.append(line)
    return "\n".join(lines) + "\n", filled


def write_private(path: Path, text: str, force: bool) -> None:
    """Write ``text`` to ``path`` with mode 0600 from the first byte; refuse an existing file
    unless ``force`` (then it is replaced atomically, never left half-written)."""
    if path.exists() and not force:
        raise FileExistsError(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o600)  # whatever the umask did
        if force:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if the file appeared meanwhile: never overwrite
            tmp.unlink()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--example", type=Path, default=EXAMPLE, help="template (default docker/.env.example)")
    parser.add_argument("--out", type=Path, default=TARGET, help="file to write (default docker/.env)")
    parser.add_argument("--force", action="store_true", help="replace an existing file (every secret changes)")
    args = parser.parse_args(argv)
    try:
        text, filled = render(args.example.read_text(encoding="utf-8"))
        write_private(args.out, text, args.force)
    except FileExistsError:
        print(f"error: {args.out} exists and holds the secrets the stack was set up with; keep it, or replace "
              "every secret with `make secrets FORCE=1` (then recreate the stack's volumes: the databases, MinIO "
              "and MLflow users were created with the old ones)", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write {args.out} from {args.example}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} (mode 0600): {len(filled)} secrets generated ({', '.join(filled)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
