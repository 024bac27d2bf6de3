"""Where `hemo score` writes and what it scores with by default: the output files and their
siblings, a shard's files, the shard argument. Shared by score, plan-scoring and merge-scores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

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
