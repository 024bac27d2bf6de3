"""Three triage bins per exam with a finite-sample guarantee: low risk, defer, high risk.

A bleed sorted into "low risk" is the error that matters, so its rate is controlled, not merely
estimated. Split conformal risk control (Angelopoulos et al., "Conformal Risk Control", 2022)
on calibration exams that played no part in training (the `val` role): among n positive
calibration exams, a cut-off λ such that (n R(λ) + 1) / (n + 1) <= alpha, with R(λ) the fraction
of positives scoring below λ, gives E[fraction of new positive exams below λ] <= alpha for
exchangeable exams. That is: at most floor(alpha (n + 1) - 1) calibration positives may fall
below λ. With fewer than 1/alpha - 1 positives no exam can be called low risk at that target
(every exam is deferred or high risk), and :class:`TriageRule` says so. The "high risk" cut-off
controls the rate of negatives flagged high the same way (target ``beta``). An exam both rules
would place (the cut-offs cross) is deferred: a person looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta as beta_distribution

LOW, DEFER, HIGH = "low_risk", "defer", "high_risk"


def allowed_misses(n: int, alpha: float) -> int:
    """How many of n calibration exams may fall on the wrong side: floor(alpha (n + 1) - 1), -1
    when even none would exceed the target."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"the target rate must be in (0, 1), got {alpha}")
    return math.floor(alpha * (n + 1) - 1 + 1e-12)


@dataclass(frozen=True)
class TriageRule:
    """low risk: score < low_below; high risk: score > high_above (and not low); else defer."""

    low_below: float
    high_above: float
    alpha: float
    beta: float
    calibration_positives: int
    calibration_negatives: int

    @property
    def low_risk_possible(self) -> bool:
        return self.low_below > 0.0

    @property
    def high_risk_possible(self) -> bool:
        return self.high_above < 1.0

    def assign(self, scores: np.ndarray) -> np.ndarray:
        """The bin of each exam score."""
        s = np.asarray(scores, dtype=np.float64)
        low = s < self.low_below
        high = (s > self.high_above) & ~low
        crossed = low & (s > self.high_above)  # both rules claim it: a person looks
        return np.where(crossed, DEFER, np.where(low, LOW, np.where(high, HIGH, DEFER)))


def fit_triage(scores: np.ndarray, labels: np.ndarray, alpha: float, beta: float) -> TriageRule:
    """Cut-offs from calibration exams' scores (e.g. calibrated P(any hemorrhage)) and 0/1 labels.
    ``alpha``: the target rate of positive exams called low risk; ``beta``: of negative exams
    called high risk."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel().astype(bool)
    if s.shape != y.shape or not np.isfinite(s).all():
        raise ValueError("need one finite score per labelled exam")
    positives, negatives = np.sort(s[y]), np.sort(s[~y])[::-1]
    misses = allowed_misses(len(positives), alpha)
    # the (misses + 1)-th lowest positive: at most `misses` positives score strictly below it
    low_below = float(positives[misses]) if 0 <= misses < len(positives) else (0.0 if misses < 0 else 1.0 + 1e-9)
    alarms = allowed_misses(len(negatives), beta)
    # the (alarms + 1)-th highest negative: at most `alarms` negatives score strictly above it
    high_above = float(negatives[alarms]) if 0 <= alarms < len(negatives) else (1.0 if alarms < 0 else -1e-9)
    return TriageRule(low_below, high_above, alpha, beta, len(positives), len(negatives))


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact two-sided binomial interval of k successes in n trials (NaN, NaN for n = 0)."""
    if n == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(beta_distribution.ppf(tail, k, n - k + 1))
    high = 1.0 if k == n else float(beta_distribution.ppf(1.0 - tail, k + 1, n - k))
    return low, high


def triage_report(bins: np.ndarray, labels: np.ndarray, confidence: float = 0.95) -> dict[str, object]:
    """What the bins did on labelled exams (e.g. the gate patients): the positives called low risk
    (the error that matters: count, rate and its exact interval), the negatives called high risk,
    and the deferral fraction, each with its denominator."""
    b, y = np.asarray(bins), np.asarray(labels).ravel().astype(bool)
    missed, alarms, deferred = int(((b == LOW) & y).sum()), int(((b == HIGH) & ~y).sum()), int((b == DEFER).sum())
    n_pos, n_neg, n = int(y.sum()), int((~y).sum()), len(b)
    return {
        "exams": n, "positives": n_pos, "negatives": n_neg,
        "positives_low_risk": missed,
        "low_risk_false_negative_rate": missed / n_pos if n_pos else float("nan"),
        "low_risk_false_negative_rate_interval": clopper_pearson(missed, n_pos, confidence),
        "negatives_high_risk": alarms,
        "high_risk_false_positive_rate": alarms / n_neg if n_neg else float("nan"),
        "high_risk_false_positive_rate_interval": clopper_pearson(alarms, n_neg, confidence),
        "deferred": deferred, "deferral_fraction": deferred / n if n else float("nan"),
        "deferral_fraction_interval": clopper_pearson(deferred, n, confidence),
    }
