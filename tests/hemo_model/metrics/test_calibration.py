"""Calibration error against values computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from hemo_model.metrics.calibration import (
    classwise_calibration_error,
    expected_calibration_error,
    reliability,
)


def test_ece_by_hand_with_two_bins() -> None:
    # bin [0, 0.5): p 0.1, 0.3 (mean 0.2), labels 0, 1 (freq 0.5): gap 0.3, weight 2/5
    # bin [0.5, 1]: p 0.6, 0.8, 1.0 (mean 0.8), labels 1, 1, 0 (freq 2/3): gap 2/15, weight 3/5
    probs = np.array([0.1, 0.3, 0.6, 0.8, 1.0])
    labels = np.array([0, 1, 1, 1, 0])
    table = reliability(labels, probs, bins=2)
    assert table.counts.tolist() == [2, 3]
    np.testing.assert_allclose(table.confidence, [0.2, 0.8])
    np.testing.assert_allclose(table.frequency, [0.5, 2 / 3])
    assert expected_calibration_error(labels, probs, bins=2) == pytest.approx(0.4 * 0.3 + 0.6 * 2 / 15)


def test_perfectly_calibrated_scores_are_near_zero_and_overconfident_ones_are_not() -> None:
    rng = np.random.default_rng(0)
    p = rng.uniform(size=200_000)
    y = rng.uniform(size=p.size) < p  # each label drawn with exactly its probability
    assert expected_calibration_error(y, p) < 0.01
    sharpened = np.where(p > 0.5, 1.0 - (1.0 - p) / 3, p / 3)  # pushed towards 0 and 1
    assert expected_calibration_error(y, sharpened) > 0.1


def test_empty_bins_do_not_count_and_a_probability_of_one_lands_in_the_last_bin() -> None:
    table = reliability(np.array([1, 1]), np.array([1.0, 0.95]), bins=10)
    assert table.counts[-1] == 2 and table.counts[:-1].sum() == 0
    assert np.isnan(table.confidence[0]) and table.ece == pytest.approx(1 - 0.975)


def test_classwise_takes_each_column_and_the_whole_matrix_counts_every_cell() -> None:
    labels = np.array([[0, 1], [1, 1], [0, 0], [1, 0]])
    probs = np.array([[0.1, 0.9], [0.9, 0.6], [0.2, 0.4], [0.7, 0.1]])
    per_class = classwise_calibration_error(labels, probs, bins=5)
    assert per_class.tolist() == [expected_calibration_error(labels[:, c], probs[:, c], bins=5) for c in (0, 1)]
    assert expected_calibration_error(labels, probs, bins=5) == pytest.approx(
        expected_calibration_error(labels.ravel(), probs.ravel(), bins=5))


@pytest.mark.parametrize("probs", [np.array([0.2, 1.2]), np.array([0.2, np.nan])])
def test_probabilities_outside_zero_one_are_refused(probs: np.ndarray) -> None:
    with pytest.raises(ValueError, match="finite and in"):
        reliability(np.array([0, 1]), probs)


def test_a_calibrated_models_ece_shrinks_with_the_number_of_predictions() -> None:
    from hemo_model.metrics.calibration import ece_of_a_calibrated_model

    rng = np.random.default_rng(3)
    few, many = rng.random(72), rng.random(7200)
    mean_few, high_few = ece_of_a_calibrated_model(few, bins=10, draws=400)
    mean_many, _ = ece_of_a_calibrated_model(many, bins=10, draws=50)
    assert 0.03 < mean_few < high_few < 0.2  # 72 predictions: far from 0 although calibrated by construction
    assert mean_many < mean_few / 5  # ~1/sqrt(n)
    # certain predictions are calibrated exactly: nothing to draw
    assert ece_of_a_calibrated_model(np.array([0.0, 1.0, 1.0]), bins=10, draws=20) == (0.0, 0.0)
    assert all(np.isnan(ece_of_a_calibrated_model(np.array([]))))
