"""The calibration that travels in the spec: fitted on simulated exams whose truth is known, it
recovers the slice distortion, calibrates exams, and its triage keeps the low-risk miss rate."""

from __future__ import annotations

import numpy as np
import pytest

from hemo_model.inference.calibrated import exam_labels, fit_calibration, score_exam, slice_probabilities, triage_bins
from hemo_model.inference.triage import DEFER, HIGH, LOW
from hemo_model.metrics.calibration import expected_calibration_error

TEMPERATURE, SHIFT = 2.0, 1.5


def _exams(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Exams of 6-20 slices; half hold a bleed (a run of slices with a high true logit). Labels are
    drawn from sigmoid(u); the network is simulated as reporting T u + s (too sharp and shifted)."""
    rng = np.random.default_rng(seed)
    logits, labels = [], []
    for i in range(n):
        slices = int(rng.integers(6, 21))
        u = rng.normal(-7.0, 1.5, size=(slices, 5))
        if i % 2:
            start = int(rng.integers(0, slices - 3))
            u[start:start + 3, rng.integers(0, 5)] += rng.uniform(6.0, 12.0)
        y = (rng.uniform(size=u.shape) < 1 / (1 + np.exp(-u))).astype(float)
        logits.append(u * TEMPERATURE + SHIFT)
        labels.append(y)
    return logits, labels


def test_recovers_the_slice_distortion() -> None:
    """The temperature is recovered; the shift is weakly identified (few slices near the boundary),
    so the check is on what matters: calibrated probabilities near the true ones over u in [-3, 3]."""
    logits, labels = _exams(2000, seed=0)
    fitted = fit_calibration(logits, labels, "context", 0.05, 0.1)
    assert fitted.slice_temperatures == pytest.approx((TEMPERATURE,) * 5, rel=0.1)
    u = np.linspace(-3.0, 3.0, 61)[:, None].repeat(5, axis=1)
    truth = 1 / (1 + np.exp(-u))
    assert np.abs(slice_probabilities(u * TEMPERATURE + SHIFT, fitted) - truth).max() < 0.1
    assert np.abs(slice_probabilities(u * TEMPERATURE + SHIFT, None) - truth).max() > 0.3  # it needed calibrating
    assert fitted.n_exams == 2000 and fitted.n_slices == sum(len(z) for z in logits)


def test_exam_probabilities_are_calibrated_on_new_exams() -> None:
    fitted = fit_calibration(*_exams(400, seed=1), "context", 0.05, 0.1)
    logits, labels = _exams(400, seed=2)
    truth = exam_labels(labels)
    raw = np.array([score_exam(z, None).probabilities for z in logits])
    calibrated = np.array([score_exam(z, fitted).probabilities for z in logits])
    before, after = expected_calibration_error(truth, raw), expected_calibration_error(truth, calibrated)
    assert after < before and after < 0.05, (before, after)


def test_low_risk_misses_stay_within_the_target_on_new_exams() -> None:
    """Conformal risk control: over fresh calibration sets the mean fraction of bleeding exams
    called low risk stays at or below the target (checked over 40 refits, 200 exams each)."""
    rates = []
    for seed in range(40):
        fitted = fit_calibration(*_exams(200, seed=100 + seed), "context", 0.1, 0.1)
        assert fitted.low_risk_below > 0.0  # every bin open: the rate can exceed the target
        logits, labels = _exams(200, seed=1000 + seed)
        p_any = np.array([score_exam(z, fitted).probabilities[0] for z in logits])
        bleeding = exam_labels(labels)[:, 0].astype(bool)
        rates.append(np.mean(triage_bins(p_any, fitted)[bleeding] == LOW))
    assert np.mean(rates) <= 0.1 + 0.02, np.mean(rates)


def test_too_few_bleeding_exams_close_the_low_risk_bin() -> None:
    logits, labels = _exams(20, seed=3)  # 10 bleeding exams; 19 are needed at a 5 % target
    fitted = fit_calibration(logits, labels, "context", 0.05, 0.1)
    assert fitted.low_risk_below == 0.0 and fitted.n_positive_exams == 10
    bins = [score_exam(z, fitted).bin for z in logits]
    assert LOW not in bins and set(bins) <= {DEFER, HIGH}


def test_without_a_calibration_every_exam_is_deferred_and_evidence_points_at_the_top_slice() -> None:
    z = np.full((7, 5), -5.0)
    z[4, 2] = 3.0
    z[1, 2] = 1.0
    exam = score_exam(z, None, evidence=2)
    assert exam.bin == DEFER
    assert exam.probabilities[0] == pytest.approx(1 / (1 + np.exp(-3.0)))
    assert exam.evidence[2] == [4, 1] and exam.evidence[-1] == [4, 1]
    assert np.allclose(slice_probabilities(z, None), 1 / (1 + np.exp(-z)))
