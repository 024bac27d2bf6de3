"""Calibration error: how far predicted probabilities sit from the frequencies they claim.

A triage bin or a worklist priority reads the probability itself, not only which side of a
threshold it falls on, so "0.9" must mean about 9 in 10. Measured the usual way (Naeini et al.,
2015; Guo et al., 2017): equal-width bins over [0, 1], and the expected calibration error (ECE)
is the count-weighted mean gap between a bin's mean probability and its observed frequency. For
multi-label outputs each class column is its own binary problem (class-wise ECE, Kull et al.,
2019); ``expected_calibration_error`` over a whole matrix counts every slice x class cell once.
Plain numpy: the reliability diagram is drawn by the pipeline from :class:`Reliability`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BINS = 15
"""Guo et al.'s choice; with a few hundred exams, fewer bins (10) keep each one populated."""


@dataclass(frozen=True)
class Reliability:
    """Per bin: its edges, the mean predicted probability, the observed frequency of positives
    and the number of predictions (empty bins: NaN means, count 0)."""

    edges: np.ndarray
    confidence: np.ndarray
    frequency: np.ndarray
    counts: np.ndarray

    @property
    def ece(self) -> float:
        """Count-weighted mean |confidence - frequency| over the non-empty bins."""
        filled = self.counts > 0
        total = self.counts.sum()
        if total == 0:
            return float("nan")
        gaps = np.abs(self.confidence[filled] - self.frequency[filled])
        return float((gaps * self.counts[filled]).sum() / total)


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = DEFAULT_BINS) -> Reliability:
    """Bin every (label, probability) pair of the arrays (any shape, flattened together); a
    probability of exactly 1 falls in the last bin."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(probs, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in size: {y.size} and {p.size}")
    if p.size and (not np.isfinite(p).all() or p.min() < 0.0 or p.max() > 1.0):
        raise ValueError("probabilities must be finite and in [0, 1]")
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1], right=False), 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.bincount(index, weights=p, minlength=bins) / counts
        frequency = np.bincount(index, weights=y, minlength=bins) / counts
    return Reliability(edges, confidence, frequency, counts)


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = DEFAULT_BINS) -> float:
    """ECE over every cell of ``labels``/``probs`` (a vector, or a slices x classes matrix)."""
    return reliability(labels, probs, bins).ece


def classwise_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = DEFAULT_BINS) -> np.ndarray:
    """ECE of each column of an (n, classes) pair of arrays."""
    y, p = np.asarray(labels), np.asarray(probs)
    if y.ndim != 2 or y.shape != p.shape:
        raise ValueError(f"expected two (n, classes) arrays of one shape, got {y.shape} and {p.shape}")
    return np.array([reliability(y[:, c], p[:, c], bins).ece for c in range(y.shape[1])])


def ece_of_a_calibrated_model(probs: np.ndarray, bins: int = DEFAULT_BINS, draws: int = 2000,
                              seed: int = 0) -> tuple[float, float]:
    """(mean, 95th percentile) of the ECE that a perfectly calibrated model with these
    probabilities would show: labels drawn as Bernoulli(p) ``draws`` times. ECE is biased upward
    on few predictions (each bin's observed frequency is noisy, and the gap is an absolute value),
    so a figure from a dozen exams is read against this floor, not against 0."""
    p = np.asarray(probs, dtype=np.float64).ravel()
    if p.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = np.array([expected_calibration_error(rng.random(p.size) < p, p, bins) for _ in range(draws)])
    return float(values.mean()), float(np.quantile(values, 0.95))
