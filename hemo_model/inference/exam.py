"""From slice probabilities to one answer per exam (series): does it bleed, which kind, where.

A radiologist and a worklist act per exam. The exam's probability of a class is taken from its
slices by a fixed rule: ``max`` (the most suspicious slice decides; the usual rule in the RSNA
2019 solutions and in exam-level studies) or ``noisy_or`` (1 - prod(1 - p): slices as independent
witnesses, which over-counts neighbouring slices of one bleed, so it runs high on long series).
"Any hemorrhage" per slice is the largest of its five class probabilities (the five are not
independent either), then the same rule across slices. The evidence is the top-k slices per
class: the ones a reader should open first and the ones a saliency map is drawn for.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

ExamRule = Literal["max", "noisy_or"]
EXAM_RULES: tuple[str, ...] = ("max", "noisy_or")


def _check(slice_probs: np.ndarray) -> np.ndarray:
    p = np.asarray(slice_probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"expected (slices, classes) probabilities of at least one slice, got shape {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("probabilities must be finite and in [0, 1]")
    return p


def combine(slice_probs: np.ndarray, rule: ExamRule = "max") -> np.ndarray:
    """Each column's exam probability from its slices' (rows') probabilities."""
    p = _check(slice_probs)
    if rule == "max":
        return p.max(axis=0)
    if rule == "noisy_or":
        return 1.0 - np.exp(np.log1p(-np.minimum(p, 1.0 - 1e-12)).sum(axis=0))
    raise ValueError(f"unknown exam rule {rule!r}; one of {EXAM_RULES}")


def exam_probabilities(slice_probs: np.ndarray, rule: ExamRule = "max") -> tuple[float, np.ndarray]:
    """(probability of any hemorrhage, probability of each class) for one exam."""
    p = _check(slice_probs)
    any_slice = p.max(axis=1, keepdims=True)
    return float(combine(any_slice, rule)[0]), combine(p, rule)


def evidence_slices(slice_probs: np.ndarray, k: int = 3) -> list[list[int]]:
    """Per class (columns) and then for "any" (last list): the indices of the k most suspicious
    slices, most suspicious first (ties: the lower index first)."""
    p = _check(slice_probs)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    columns = np.concatenate([p, p.max(axis=1, keepdims=True)], axis=1)
    order = np.argsort(-columns, axis=0, kind="stable")[: min(k, len(p))]
    return [order[:, c].tolist() for c in range(columns.shape[1])]
