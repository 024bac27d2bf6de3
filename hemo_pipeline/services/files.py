"""Atomic output files: write to a temp file in the same folder, then rename over the target.

A step that is interrupted, or fails half-way, never leaves a truncated report, metrics file,
plot or prediction CSV where the previous good one was. Files get the mode a plain ``open()``
would give them (0666 minus the process umask, 0644 by default), not the 0600 of a temp file: the
Airflow worker that reads a report is often another uid than the container that wrote it. Files
that hold secrets or identifiers pass ``mode=0o600``: the temp file is created with that mode, so
the content is never readable by others, not even for a moment before a ``chmod``.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_file(path: Path, mode: int | None = None, binary: bool = False) -> Iterator[IO[Any]]:
    """An open temp file beside ``path`` (created 0600 by :mod:`tempfile`), renamed over ``path``
    when the block succeeds and removed when it fails. ``mode`` is the final mode (default: what
    the umask gives a new file); a private ``mode`` is set before anything is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[Any]
    if binary:
        handle = tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                             delete=False)
    else:
        handle = tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                             delete=False, newline="", encoding="utf-8")
    final = (0o666 & ~_umask()) if mode is None else mode
    try:
        with handle:
            if final & 0o077 == 0:
                os.chmod(handle.name, final)  # private from the first byte
            yield handle
        os.chmod(handle.name, final)
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, payload: Any, mode: int | None = None) -> None:
    with atomic_file(path, mode) as handle:
        json.dump(payload, handle, indent=2, default=float)


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    with atomic_file(path, mode) as handle:
        handle.write(text)


def write_bytes_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    with atomic_file(path, mode, binary=True) as handle:
        handle.write(data)


def write_csv_atomic(path: Path, header: list[str], rows: Iterable[Iterable[Any]], mode: int | None = None) -> None:
    with atomic_file(path, mode) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def write_figure_atomic(path: Path, figure: Any, **savefig: Any) -> None:
    """A matplotlib figure saved as ``path`` (format from its suffix), atomically."""
    with atomic_file(path, binary=True) as handle:
        figure.savefig(handle, format=path.suffix.lstrip(".") or "png", **savefig)
