"""Temperature scaling: recovers a known temperature, lowers the calibration error of
overconfident scores, never changes a decision."""

from __future__ import annotations

import numpy as np
import pytest

from hemo_model.inference.calibration import (
    TEMPERATURE_BOUNDS,
    calibrated_probabilities,
    calibrated_thresholds,
    fit_platt,
    fit_platt_per_class,
    fit_temperature,
    fit_temperatures,
)
from hemo_model.metrics.calibration import expected_calibration_error


def _overconfident(n: int, temperature: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(u), logits reported as u * temperature (too sharp when > 1)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0.0, 2.0, size=n)
    y = (rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-u))).astype(float)
    return u * temperature, y


def test_recovers_the_temperature_that_made_the_scores_overconfident() -> None:
    logits, labels = _overconfident(100_000, 2.5, seed=0)
    assert fit_temperature(logits, labels) == pytest.approx(2.5, rel=0.03)


def test_calibration_error_falls_and_decisions_stay() -> None:
    logits, labels = _overconfident(20_000, 3.0, seed=1)
    raw = 1.0 / (1.0 + np.exp(-logits))
    temperature = fit_temperature(logits[:10_000], labels[:10_000])  # fitted on one half, judged on the other
    scaled = calibrated_probabilities(logits[10_000:, None], [temperature])[:, 0]
    before = expected_calibration_error(labels[10_000:], raw[10_000:])
    after = expected_calibration_error(labels[10_000:], scaled)
    assert before > 0.05 and after < before / 3
    for threshold in (0.1, 0.3, 0.5, 0.8):
        moved = calibrated_thresholds([threshold], [temperature])[0]
        assert np.array_equal(raw[10_000:] >= threshold, scaled >= moved)


def test_one_temperature_per_class_and_a_class_without_both_labels_keeps_one() -> None:
    a, ya = _overconfident(5_000, 2.0, seed=2)
    b, yb = _overconfident(5_000, 0.5, seed=3)
    logits = np.stack([a, b, a], axis=1)
    labels = np.stack([ya, yb, np.zeros_like(ya)], axis=1)
    temperatures = fit_temperatures(logits, labels)
    assert temperatures[0] > 1.5 and temperatures[1] < 0.7 and temperatures[2] == 1.0


@pytest.mark.parametrize("temperatures", [[1.0, 1.0], [0.0], [-1.0]])
def test_a_temperature_per_class_and_positive(temperatures: list[float]) -> None:
    with pytest.raises(ValueError, match="one positive temperature per class"):
        calibrated_probabilities(np.zeros((3, 1)), temperatures)


def test_platt_recovers_a_shift_and_a_scale_that_temperature_alone_cannot() -> None:
    from hemo_model.inference.calibration import fit_platt

    logits, labels = _overconfident(100_000, 2.0, seed=4)
    shifted = logits + 1.5  # every logit moved up, as a loss that spares easy negatives leaves them
    temperature, shift = fit_platt(shifted, labels)
    assert temperature == pytest.approx(2.0, rel=0.05) and shift == pytest.approx(1.5, abs=0.1)
    platt = calibrated_probabilities(shifted[:, None], [temperature], [shift])[:, 0]
    only_t = calibrated_probabilities(shifted[:, None], [fit_temperature(shifted, labels)])[:, 0]
    assert expected_calibration_error(labels, platt) < 0.01 < expected_calibration_error(labels, only_t)
    raw = 1.0 / (1.0 + np.exp(-shifted))
    moved = calibrated_thresholds([0.5], [temperature], [shift])[0]
    assert np.array_equal(raw >= 0.5, platt >= moved)  # the same decisions


def test_a_class_without_positives_takes_the_pooled_fit() -> None:
    """EDH often has no positive val slice: it gets the scale and shift fitted over all classes,
    not the identity, and a class with enough of both keeps its own."""
    logits, labels = _overconfident(20_000, 3.0, seed=7)
    z = np.stack([logits, logits, logits - 50.0], axis=1)  # column 2: every label 0 below
    y = np.stack([labels, labels, np.zeros_like(labels)], axis=1)
    temperatures, shifts = fit_platt_per_class(z, y, min_each=10)
    pooled = fit_platt(z.ravel(), y.ravel())
    assert (temperatures[2], shifts[2]) == pytest.approx(pooled)
    assert temperatures[0] == pytest.approx(3.0, rel=0.05) and temperatures[2] != pytest.approx(1.0, abs=0.05)
    assert fit_platt_per_class(z, y)[0][2] == pytest.approx(pooled[0])  # min_each 1: still no positive


def test_smoothed_targets_keep_a_separable_handful_finite() -> None:
    """Eight separable examples: plain Platt sharpens to the temperature bound (probabilities 0 and
    1), Platt's smoothed targets stop well short of it."""
    z, y = np.array([-2.0, -1.5, -1.0, -0.5, 0.5, 1.0, 1.5, 2.0]), np.array([0, 0, 0, 0, 1, 1, 1, 1.0])
    plain, _ = fit_platt(z, y)
    smoothed, _ = fit_platt(z, y, smoothed=True)
    assert plain == pytest.approx(TEMPERATURE_BOUNDS[0], rel=0.01)
    assert smoothed > 5 * TEMPERATURE_BOUNDS[0]
    top = calibrated_probabilities(np.array([[2.0]]), [smoothed])[0, 0]
    assert 0.8 < top < 0.95  # about (n+ + 1) / (n+ + 2) = 5/6 at the most confident positive
