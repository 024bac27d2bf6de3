"""Benchmark `hemo validate` on a label file of the original DLCV size.

50,492 slices of 1,535 patients (22-40 slices each), as in the original training set; images
are tiny (16x16) since the point is the label/sequence checks, which must stay under 10 s.
Prints the time of the label/sequence checks alone and of the full run with every image opened.
Run: `.venv/bin/python benchmarks/validation_speed.py` (or `make bench`).
"""

from __future__ import annotations

import csv
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402

from hemo_model import LABEL_COLUMNS  # noqa: E402
from hemo_pipeline.steps.validate import validate

PATIENTS, SLICES, SIZE = 1535, 50492, 16


def slice_counts(rng: np.random.Generator) -> list[int]:
    counts = rng.integers(22, 41, size=PATIENTS)
    while counts.sum() != SLICES:  # nudge single patients until the total matches the original
        i = int(rng.integers(PATIENTS))
        step = 1 if counts.sum() < SLICES else -1
        if 22 <= counts[i] + step <= 40:
            counts[i] += step
    return counts.tolist()


def build(root: Path) -> None:
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (SIZE, SIZE), dtype=np.uint8), mode="L").save(buffer, format="JPEG")
    blob = buffer.getvalue()
    rates = np.array([0.117, 0.082, 0.116, 0.165, 0.040])
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS)
        for p, n in enumerate(slice_counts(rng)):
            h = f"{p:010x}"
            folder = root / "train" / f"ID_{h}"
            folder.mkdir(parents=True)
            for k in range(n):
                (folder / f"{h}_{k}.jpg").write_bytes(blob)
                writer.writerow([f"ID_{h}", f"{h}_{k}.jpg", *(rng.random(5) < rates).astype(int).tolist()])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        root.mkdir()
        build(root)
        print(machine_line())
        print(f"data: {PATIENTS} patients, {SLICES} slices, {SIZE}x{SIZE} JPEGs")
        for label, images in (("label/sequence checks (--skip-images)", False), ("all checks, every image decoded", True)):
            started = time.perf_counter()
            results, _ = validate(root, Path(tmp) / "reports", 22, 40, SIZE, check_images=images)
            elapsed = time.perf_counter() - started
            assert all(c.success for c in results), [c.line() for c in results if not c.success]
            print(f"{label}: {elapsed:.2f} s ({len(results)} checks passed, incl. data docs)")


if __name__ == "__main__":
    main()
