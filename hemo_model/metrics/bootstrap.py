"""Per-patient confusion counts and the patient-level bootstrap over them.

Pooled F2 is a ratio of sums over slices; resampling patients (never slices: neighbouring slices
of one scan are nearly identical) and recomputing it from resampled count sums gives intervals
that respect how the data was collected.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hemo_model import CLASSES

TP = 0


FP = 1


FN = 2


def patient_counts(labels: Sequence[np.ndarray], predictions: Sequence[np.ndarray]) -> np.ndarray:
    """(patients, classes, 3) counts [tp, fp, fn] from per-patient (slices, classes) 0/1 arrays."""
    rows = []
    for y, p in zip(labels, predictions, strict=True):
        y, p = np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.int64)
        rows.append(np.stack([(y & p).sum(0), ((1 - y) & p).sum(0), (y & (1 - p)).sum(0)], axis=-1))
    return np.stack(rows).astype(np.float64) if rows else np.zeros((0, len(CLASSES), 3))


def counts_by_patient(counts: np.ndarray, keys: Sequence[str]) -> np.ndarray:
    """Per-scan counts ``(scans, classes, 3)`` summed per patient key, rows in sorted key order.

    Two scans of one person (a follow-up, a second reconstruction) are not independent: a
    bootstrap that draws them separately understates the spread. Summed here, they are drawn (and
    permuted, and counted as one "exam" for exam-level sensitivity) together. With one scan per
    key and keys already sorted, the result equals ``counts``."""
    if len(keys) != counts.shape[0]:
        raise ValueError(f"{len(keys)} keys for {counts.shape[0]} rows of counts")
    order = sorted(set(keys))
    row = {key: i for i, key in enumerate(order)}
    grouped = np.zeros((len(order), *counts.shape[1:]), dtype=counts.dtype)
    np.add.at(grouped, [row[k] for k in keys], counts)
    return grouped


def f2_from_counts(counts: np.ndarray) -> np.ndarray:
    """F2 = 5 tp / (5 tp + 4 fn + fp) over the last axis [tp, fp, fn]; 0 where undefined
    (sklearn's zero_division=0)."""
    tp, fp, fn = counts[..., TP], counts[..., FP], counts[..., FN]
    denominator = 5 * tp + 4 * fn + fp
    return np.divide(5 * tp, denominator, out=np.zeros_like(tp, dtype=np.float64), where=denominator > 0)


def precision_from_counts(counts: np.ndarray) -> np.ndarray:
    tp, fp = counts[..., TP], counts[..., FP]
    return np.divide(tp, tp + fp, out=np.zeros_like(tp, dtype=np.float64), where=(tp + fp) > 0)


def recall_from_counts(counts: np.ndarray) -> np.ndarray:
    tp, fn = counts[..., TP], counts[..., FN]
    return np.divide(tp, tp + fn, out=np.zeros_like(tp, dtype=np.float64), where=(tp + fn) > 0)


def bootstrap_weights(n_patients: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, patients): how often each patient is drawn in each resample (multinomial).
    Share one draw between models to get a *paired* bootstrap."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_patients, np.full(n_patients, 1.0 / n_patients), size=resamples).astype(np.float64)


def resample_counts(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(resamples, classes, 3) summed counts of each resample."""
    return np.einsum("bp,pck->bck", weights, counts)


def micro_counts(counts: np.ndarray) -> np.ndarray:
    """Pool the class axis (second to last): micro-averaged [tp, fp, fn]."""
    return counts.sum(axis=-2)


def interval(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap ``samples`` along axis 0 (floats for 1-D samples)."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [tail, 1.0 - tail], axis=0)
    return low, high


DENOMINATORS = {  # where a per-class metric is defined: its denominator over [tp, fp, fn]
    "f2": lambda tp, fp, fn: 5 * tp + 4 * fn + fp,
    "precision": lambda tp, fp, fn: tp + fp,
    "recall": lambda tp, fp, fn: tp + fn,
}


def interval_where_defined(samples: np.ndarray, counts: np.ndarray, metric: str, confidence: float,
                           fallback: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval over the resamples in which ``metric`` is defined for each class.

    A resample that drew no patient with a rare class has no recall for it; counting that as 0
    (as the point estimate's zero_division does) would pull the lower bound to 0 for any class
    whose positives sit in a few patients. Classes never defined get ``fallback`` (the point)."""
    defined = DENOMINATORS[metric](counts[..., TP], counts[..., FP], counts[..., FN]) > 0
    masked = np.where(defined, samples, np.nan)
    tail = (1.0 - confidence) / 2.0
    any_defined = defined.any(axis=0)
    safe = np.where(any_defined, masked, 0.0)  # nanquantile warns on all-NaN columns
    low, high = np.nanquantile(safe, [tail, 1.0 - tail], axis=0)
    return np.where(any_defined, low, fallback), np.where(any_defined, high, fallback)
