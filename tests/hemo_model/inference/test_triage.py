"""Conformal triage: cut-offs by hand, the guarantee over many draws, and the report's counts."""

from __future__ import annotations

import numpy as np
import pytest

from hemo_model.inference.triage import (
    DEFER,
    HIGH,
    LOW,
    allowed_misses,
    clopper_pearson,
    fit_triage,
    triage_report,
)


def test_allowed_misses_by_hand() -> None:
    assert allowed_misses(99, 0.01) == 0  # 0.01 * 100 - 1 = 0
    assert allowed_misses(98, 0.01) == -1  # too few positives for a 1 % target: no low-risk bin
    assert allowed_misses(199, 0.01) == 1
    assert allowed_misses(19, 0.1) == 1


def test_cut_offs_by_hand() -> None:
    # 9 positives at 0.1..0.9, alpha 0.2: floor(0.2 * 10 - 1) = 1 may fall below -> the 2nd lowest, 0.2
    # 4 negatives at 0.05..0.35, beta 0.4: floor(0.4 * 5 - 1) = 1 may score above -> the 2nd highest, 0.25
    positives = np.round(np.arange(1, 10) / 10, 2)
    negatives = np.array([0.05, 0.15, 0.25, 0.35])
    rule = fit_triage(np.concatenate([positives, negatives]), np.r_[np.ones(9), np.zeros(4)], alpha=0.2, beta=0.4)
    assert (rule.low_below, rule.high_above) == (0.2, 0.25)
    assert rule.assign(np.array([0.1, 0.2, 0.22, 0.3])).tolist() == [LOW, DEFER, DEFER, HIGH]


def test_too_few_positives_means_no_exam_is_low_risk() -> None:
    rule = fit_triage(np.linspace(0, 1, 60), np.r_[np.ones(30), np.zeros(30)], alpha=0.01, beta=0.01)
    assert not rule.low_risk_possible and not rule.high_risk_possible
    assert set(rule.assign(np.linspace(0, 1, 11)).tolist()) == {DEFER}


def test_crossed_cut_offs_defer() -> None:
    # generous targets on well separated scores: low risk below 0.7 (2nd lowest positive), high risk
    # above 0.3 (2nd highest negative); between them both rules claim an exam
    scores = np.array([0.6, 0.7, 0.8, 0.9, 0.1, 0.2, 0.3, 0.4])
    rule = fit_triage(scores, np.r_[np.ones(4), np.zeros(4)], alpha=0.5, beta=0.5)
    assert rule.low_below > rule.high_above
    assert (rule.low_below, rule.high_above) == (0.7, 0.3)
    assert rule.assign(np.array([0.2, 0.5, 0.8])).tolist() == [LOW, DEFER, HIGH]


def test_the_low_risk_miss_rate_holds_its_target_on_average_over_fresh_draws() -> None:
    """The guarantee is marginal: averaged over calibration and test draws, the rate of positives
    called low risk is at most alpha (and not far below: the bound is tight)."""
    rng = np.random.default_rng(0)
    alpha, rates = 0.1, []
    for _ in range(2000):
        calibration = rng.beta(5, 2, size=49)  # positive exams' scores
        fresh = rng.beta(5, 2, size=200)
        rule = fit_triage(np.r_[calibration, rng.beta(2, 5, size=50)], np.r_[np.ones(49), np.zeros(50)],
                          alpha=alpha, beta=0.1)
        rates.append(np.mean(fresh < rule.low_below))
    assert 0.08 < np.mean(rates) <= alpha + 0.003  # standard error of the mean ~0.001


def test_clopper_pearson_by_known_values() -> None:
    low, high = clopper_pearson(0, 10)
    assert low == 0.0 and high == pytest.approx(1 - 0.025 ** (1 / 10))  # the exact bound for k = 0
    low, high = clopper_pearson(10, 10)
    assert high == 1.0 and low == pytest.approx(0.025 ** (1 / 10))
    assert all(np.isnan(clopper_pearson(0, 0)))


def test_report_counts_each_error_with_its_denominator() -> None:
    bins = np.array([LOW, LOW, DEFER, HIGH, HIGH, DEFER])
    labels = np.array([1, 0, 1, 1, 0, 0])
    report = triage_report(bins, labels)
    assert (report["positives"], report["negatives"], report["positives_low_risk"], report["negatives_high_risk"],
            report["deferred"]) == (3, 3, 1, 1, 2)
    assert report["low_risk_false_negative_rate"] == pytest.approx(1 / 3)
    assert report["deferral_fraction"] == pytest.approx(2 / 6)
    assert report["low_risk_false_negative_rate_interval"] == clopper_pearson(1, 3)
