"""Counts summed per patient before any resampling: scans of one person are drawn together."""

from __future__ import annotations

import numpy as np
import pytest

from hemo_model.metrics.bootstrap import bootstrap_weights, counts_by_patient, resample_counts


def test_counts_of_one_patient_are_summed_in_key_order() -> None:
    counts = np.arange(4 * 5 * 3, dtype=np.float64).reshape(4, 5, 3)
    grouped = counts_by_patient(counts, ["P_b", "P_a", "P_b", "P_c"])
    assert grouped.shape == (3, 5, 3)
    np.testing.assert_array_equal(grouped[0], counts[1])
    np.testing.assert_array_equal(grouped[1], counts[0] + counts[2])
    np.testing.assert_array_equal(grouped[2], counts[3])
    np.testing.assert_array_equal(grouped.sum(0), counts.sum(0))  # pooled figures do not change


def test_one_scan_per_sorted_key_changes_nothing() -> None:
    counts = np.random.default_rng(0).integers(0, 9, (6, 5, 3)).astype(np.float64)
    np.testing.assert_array_equal(counts_by_patient(counts, [f"ID_{i}" for i in range(6)]), counts)


def test_a_resample_draws_both_scans_of_a_patient_or_neither() -> None:
    """Patient P_x's two scans carry all its positives: in every resample the pooled tp is a
    multiple of the pair's sum, never one scan's share."""
    counts = np.zeros((3, 5, 3))
    counts[0, 0, 0], counts[1, 0, 0] = 3, 4  # P_x: 3 + 4 tp
    grouped = counts_by_patient(counts, ["P_x", "P_x", "P_y"])
    tp = resample_counts(grouped, bootstrap_weights(grouped.shape[0], 500, 0))[:, 0, 0]
    assert set(np.unique(tp % 7)) == {0}


def test_keys_must_match_rows() -> None:
    with pytest.raises(ValueError, match="2 keys for 3 rows"):
        counts_by_patient(np.zeros((3, 5, 3)), ["a", "b"])
