"""Exam-level aggregation against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hemo_model.inference.exam import combine, evidence_slices, exam_probabilities

SLICES = np.array([[0.1, 0.0], [0.6, 0.2], [0.5, 0.4]])


def test_max_takes_the_most_suspicious_slice() -> None:
    anything, per_class = exam_probabilities(SLICES, "max")
    assert per_class.tolist() == [0.6, 0.4] and anything == 0.6


def test_noisy_or_by_hand() -> None:
    assert combine(SLICES, "noisy_or") == pytest.approx([1 - 0.9 * 0.4 * 0.5, 1 - 1.0 * 0.8 * 0.6])
    anything, _ = exam_probabilities(SLICES, "noisy_or")  # any per slice: 0.1, 0.6, 0.5
    assert anything == pytest.approx(1 - 0.9 * 0.4 * 0.5)


def test_noisy_or_is_never_below_max_and_a_certain_slice_is_certain() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(30, 5))
    assert (combine(p, "noisy_or") >= combine(p, "max")).all()
    p[4, 2] = 1.0
    assert combine(p, "noisy_or")[2] == pytest.approx(1.0)


def test_evidence_is_the_top_slices_per_class_then_any() -> None:
    assert evidence_slices(SLICES, k=2) == [[1, 2], [2, 1], [1, 2]]
    assert evidence_slices(SLICES, k=10)[0] == [1, 2, 0]  # never more slices than the exam has
    assert evidence_slices(np.array([[0.3], [0.3]]), k=1) == [[0], [0]]  # ties: the lower index


@pytest.mark.parametrize("bad", [np.zeros((0, 5)), np.zeros(5), np.array([[1.5]]), np.array([[np.nan]])])
def test_malformed_probabilities_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        exam_probabilities(bad)


def test_an_unknown_rule_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown exam rule"):
        combine(SLICES, "mean")  # type: ignore[arg-type]
