"""Temperature scaling and Platt scaling per class: probabilities that mean what they say,
decisions unchanged.

Guo et al. (2017) found one scalar T on the logits (p = sigmoid(z / T)) fitted on held-out data
calibrates deep networks about as well as anything richer, and it cannot change the order of the
scores: a class's ROC curve and every threshold decision stay as they were, only the threshold's
value moves (t -> sigmoid(logit(t) / T)). With five classes at very different rates one T per
class is fitted, each by minimising the mean binary cross-entropy on the `val` logits of that
class. A class without positives and negatives in the data keeps T = 1 (nothing to fit).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.optimize import minimize, minimize_scalar

TEMPERATURE_BOUNDS = (0.05, 20.0)
"""A search range wide enough for any network seen here (fitted values 0.5-3), narrow enough that a
class with separable val data (the loss falls as T -> 0) ends at a finite, recorded value."""


def _mean_bce(logits: np.ndarray, labels: np.ndarray, temperature: float) -> float:
    z = logits / temperature
    return float(np.mean(np.logaddexp(0.0, z) - labels * z))  # softplus(z) - y z, stable for any z


def _one_class(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One class's logits and 0/1 labels as flat float arrays of one size, the logits finite."""
    z = np.asarray(logits, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=np.float64).ravel()
    if z.shape != y.shape:
        raise ValueError(f"logits and labels differ in size: {z.size} and {y.size}")
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    return z, y


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    bounds: tuple[float, float] = TEMPERATURE_BOUNDS) -> float:
    """The T in ``bounds`` minimising the mean BCE of sigmoid(logits / T) against 0/1 ``labels``
    (one class); 1.0 when the labels are all one value."""
    z, y = _one_class(logits, labels)
    if y.size == 0 or y.min() == y.max():
        return 1.0
    low, high = np.log(bounds[0]), np.log(bounds[1])
    found = minimize_scalar(lambda log_t: _mean_bce(z, y, float(np.exp(log_t))), bounds=(low, high),
                            method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


def fit_temperatures(logits: np.ndarray, labels: np.ndarray) -> tuple[float, ...]:
    """One temperature per column of (n, classes) logits and labels."""
    z, y = np.asarray(logits), np.asarray(labels)
    if z.ndim != 2 or z.shape != y.shape:
        raise ValueError(f"expected two (n, classes) arrays of one shape, got {z.shape} and {y.shape}")
    return tuple(fit_temperature(z[:, c], y[:, c]) for c in range(z.shape[1]))


def fit_platt(logits: np.ndarray, labels: np.ndarray, bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
              smoothed: bool = False) -> tuple[float, float]:
    """Platt scaling (Platt, 1999) as a temperature and a shift: (T, s) minimising the mean BCE of
    sigmoid((logits - s) / T), T in ``bounds``; (1, 0) when the labels are all one value. The shift
    is what temperature alone cannot fix: a loss such as ASL, which down-weights easy negatives,
    moves every logit, not only its scale. ``smoothed``: Platt's own targets, (n+ + 1) / (n+ + 2)
    for positives and 1 / (n- + 2) for negatives instead of 1 and 0, so that a handful of separable
    examples (a dozen val exams) cannot drive T to its bound and the probabilities to 0 and 1."""
    z, y = _one_class(logits, labels)
    if y.size == 0 or y.min() == y.max():
        return 1.0, 0.0
    if smoothed:
        positives, negatives = y.sum(), y.size - y.sum()
        y = np.where(y > 0.5, (positives + 1.0) / (positives + 2.0), 1.0 / (negatives + 2.0))

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = np.exp(params[0]), params[1]  # p = sigmoid(a z + b), a = 1 / T, b = -s / T
        u = a * z + b
        p = 1.0 / (1.0 + np.exp(-u))
        residual = (p - y) / y.size
        return float(np.mean(np.logaddexp(0.0, u) - y * u)), np.array([float(residual @ (a * z)), float(residual.sum())])

    low, high = -np.log(bounds[1]), -np.log(bounds[0])
    found = minimize(loss, x0=np.zeros(2), jac=True, method="L-BFGS-B", bounds=[(low, high), (None, None)])
    a, b = float(np.exp(found.x[0])), float(found.x[1])
    return 1.0 / a, -b / a


def fit_platt_per_class(logits: np.ndarray, labels: np.ndarray, min_each: int = 1,
                        smoothed: bool = False) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(temperatures, shifts), one of each per column of (n, classes) logits and labels. A column
    with fewer than ``min_each`` positives or negatives gets the fit pooled over all columns: a
    class without a positive in val (EDH, often) is better served by the other classes' scale and
    shift than by none, and a few positives give a noisy fit."""
    z, y = np.asarray(logits), np.asarray(labels)
    if z.ndim != 2 or z.shape != y.shape:
        raise ValueError(f"expected two (n, classes) arrays of one shape, got {z.shape} and {y.shape}")
    if min_each < 1:
        raise ValueError(f"min_each must be at least 1, got {min_each}")
    pooled = fit_platt(z.ravel(), y.ravel(), smoothed=smoothed)
    positives = y.sum(axis=0)
    own = (positives >= min_each) & (len(y) - positives >= min_each)
    fitted = [fit_platt(z[:, c], y[:, c], smoothed=smoothed) if own[c] else pooled for c in range(z.shape[1])]
    return tuple(t for t, _ in fitted), tuple(s for _, s in fitted)


def calibrated_probabilities(logits: np.ndarray, temperatures: Sequence[float],
                             shifts: Sequence[float] | None = None) -> np.ndarray:
    """sigmoid((logits - s) / T) with one T (and s, default 0) per class (the last axis)."""
    t = np.asarray(temperatures, dtype=np.float64)
    if t.ndim != 1 or np.asarray(logits).shape[-1] != t.size or not (t > 0).all():
        raise ValueError(f"need one positive temperature per class, got {list(t)}")
    s = np.zeros_like(t) if shifts is None else np.asarray(shifts, dtype=np.float64)
    if s.shape != t.shape:
        raise ValueError(f"need one shift per class, got {list(s)}")
    return 1.0 / (1.0 + np.exp(-(np.asarray(logits, dtype=np.float64) - s) / t))


def calibrated_thresholds(thresholds: Sequence[float], temperatures: Sequence[float],
                          shifts: Sequence[float] | None = None) -> list[float]:
    """The thresholds that make the same decisions on calibrated probabilities:
    sigmoid(z) >= t  <=>  sigmoid((z - s) / T) >= sigmoid((logit(t) - s) / T)."""
    t = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-12, 1 - 1e-12)
    logit = np.log(t / (1.0 - t))
    s = 0.0 if shifts is None else np.asarray(shifts, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-(logit - s) / np.asarray(temperatures, dtype=np.float64)))).tolist()
