"""Atomic output files: write to a temp file in the same folder, then rename over the target.

A step that is interrupted, or fails half-way, never leaves a truncated report, metrics file or
prediction CSV where the previous good one was. Files get the mode a plain ``open()`` would give
them (0666 minus the process umask, 0644 by default), not the 0600 of a temp file: the Airflow
worker that reads a report is often another uid than the container that wrote it.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def _atomic_text(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                       delete=False, newline="", encoding="utf-8")


def _publish(temp_name: str, path: Path) -> None:
    os.chmod(temp_name, 0o666 & ~_umask())
    os.replace(temp_name, path)


def write_json_atomic(path: Path, payload: Any) -> None:
    with _atomic_text(path) as handle:
        json.dump(payload, handle, indent=2, default=float)
    _publish(handle.name, path)


def write_text_atomic(path: Path, text: str) -> None:
    with _atomic_text(path) as handle:
        handle.write(text)
    _publish(handle.name, path)


def write_csv_atomic(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    with _atomic_text(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    _publish(handle.name, path)
