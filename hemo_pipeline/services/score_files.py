"""Where `hemo score` writes and what it scores with by default: the output files and their
siblings, a shard's files, the shard argument. Shared by score, plan-scoring and merge-scores.
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from hemo_model import CLASSES
from hemo_pipeline.services.files import write_bytes_atomic

DEFAULT_MODEL = "models:/hemorrhage-classifier@champion"


def shard_spec(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    digits = sep and index.isascii() and index.isdigit() and count.isascii() and count.isdigit()
    if not digits or not 0 <= int(index) < int(count):
        raise argparse.ArgumentTypeError(f"{text!r}: use I/N with 0 <= I < N, e.g. 0/4")
    return int(index), int(count)


def shard_out(out: Path, index: int, count: int) -> Path:
    """The file a shard writes in place of ``out`` (its siblings follow, e.g. _leaderboard)."""
    return out.with_name(f"{out.stem}.shard-{index}-of-{count}{out.suffix}")


def sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.stem}_{suffix}{path.suffix}")


EXAM_CSV_COLUMNS = ("dirname", "slices", "any", *CLASSES, "triage", "calibrated",
                    "evidence_any", *(f"evidence_{c}" for c in CLASSES))
"""The per-exam file of `hemo score`: probabilities (any, then each type), triage bin, whether the
version's calibration was applied (1/0), and the evidence slices (files, ';'-separated)."""


def exams_file(out: Path) -> Path:
    """The per-exam file written beside the slice predictions ``out``: exams.csv beside the default
    predictions.csv, <stem>_exams.csv beside any other name (two scorings in one folder keep theirs)."""
    return out.with_name("exams.csv" if out.stem == "predictions" else f"{out.stem}_exams.csv")


def saliency_file(folder: Path, dirname: str, name: str) -> Path:
    """Where the map itself goes, beside its PNG: `hemo report` draws it over the source slice at
    full resolution for the PACS (a Secondary Capture)."""
    return folder / f"{dirname}_{name}.saliency.npz"


def save_saliency(path: Path, saliency: np.ndarray, slice_name: str) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, saliency=np.asarray(saliency, np.float16), slice=np.array(slice_name))
    write_bytes_atomic(path, buffer.getvalue())


def load_saliency(path: Path) -> tuple[np.ndarray, str]:
    """(map, the slice file it explains); data only (no pickles)."""
    with np.load(path, allow_pickle=False) as data:
        return np.asarray(data["saliency"], np.float32), str(data["slice"])
