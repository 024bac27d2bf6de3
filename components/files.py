"""Atomic output files: write to a temp file in the same folder, then rename over the target.

A step that is interrupted, or fails half-way, never leaves a truncated report, metrics file or
prediction CSV where the previous good one was.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _atomic_text(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp",
                                       delete=False, newline="")


def write_json_atomic(path: Path, payload: Any) -> None:
    with _atomic_text(path) as handle:
        json.dump(payload, handle, indent=2, default=float)
    os.replace(handle.name, path)


def write_csv_atomic(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> None:
    with _atomic_text(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    os.replace(handle.name, path)
