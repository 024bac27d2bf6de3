"""The leaderboard metric (micro-F2 over all slice x class cells) and per-class diagnostics.

F2 weighs recall 4x over precision: missing a bleed costs more than a false alarm. The
arithmetic is scikit-learn's; this module only fixes the conventions (threshold 0.5 unless
tuned thresholds are given, zero_division=0, ROC-AUC undefined (NaN) for a class without
both labels present).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import fbeta_score, multilabel_confusion_matrix, precision_score, recall_score, roc_auc_score

from hemo_model import CLASSES


def binarize(probs: np.ndarray, thresholds: float | Sequence[float] = 0.5) -> np.ndarray:
    return (probs >= np.asarray(thresholds, dtype=np.float64)).astype(np.int64)


def micro_f2(y_true: np.ndarray, probs: np.ndarray, thresholds: float | Sequence[float] = 0.5) -> float:
    return float(fbeta_score(y_true.astype(np.int64), binarize(probs, thresholds), beta=2, average="micro",
                             zero_division=0))


def classification_report(y_true: np.ndarray, probs: np.ndarray,
                          thresholds: float | Sequence[float] = 0.5) -> dict[str, float]:
    """Flat dict: micro_f2 plus f2/precision/recall/roc_auc per class (MLflow-friendly keys)."""
    y = y_true.astype(np.int64)
    pred = binarize(probs, thresholds)
    report = {"micro_f2": micro_f2(y, probs, thresholds)}
    f2 = fbeta_score(y, pred, beta=2, average=None, zero_division=0)
    precision = precision_score(y, pred, average=None, zero_division=0)
    recall = recall_score(y, pred, average=None, zero_division=0)
    for i, name in enumerate(CLASSES):
        report[f"f2_{name}"] = float(f2[i])
        report[f"precision_{name}"] = float(precision[i])
        report[f"recall_{name}"] = float(recall[i])
        both = 0 < y[:, i].sum() < len(y)
        report[f"roc_auc_{name}"] = float(roc_auc_score(y[:, i], probs[:, i])) if both else float("nan")
    return report


def confusion_counts(y_true: np.ndarray, probs: np.ndarray,
                     thresholds: float | Sequence[float] = 0.5) -> dict[str, dict[str, int]]:
    matrices = multilabel_confusion_matrix(y_true.astype(np.int64), binarize(probs, thresholds))
    return {name: {"tn": int(m[0, 0]), "fp": int(m[0, 1]), "fn": int(m[1, 0]), "tp": int(m[1, 1])}
            for name, m in zip(CLASSES, matrices)}


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray,
                    grid: Sequence[float] = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2))) -> list[float]:
    """Per-class threshold maximising that class's F2 on validation (ties: the one nearest 0.5)."""
    y = y_true.astype(np.int64)
    best = []
    for i in range(y.shape[1]):
        scores = [(fbeta_score(y[:, i], (probs[:, i] >= t).astype(np.int64), beta=2, zero_division=0), -abs(t - 0.5), t)
                  for t in grid]
        best.append(float(max(scores)[2]))
    return best


# --- patient-level bootstrap ---------------------------------------------------------------
# Slices of one scan are strongly correlated, so uncertainty comes from resampling patients, not
# slices. Everything below works on per-patient confusion counts, so thousands of resamples cost
# one matrix product instead of thousands of metric calls.

TP, FP, FN = 0, 1, 2


def patient_counts(labels: Sequence[np.ndarray], predictions: Sequence[np.ndarray]) -> np.ndarray:
    """(patients, classes, 3) counts [tp, fp, fn] from per-patient (slices, classes) 0/1 arrays."""
    rows = []
    for y, p in zip(labels, predictions, strict=True):
        y, p = np.asarray(y, dtype=np.int64), np.asarray(p, dtype=np.int64)
        rows.append(np.stack([(y & p).sum(0), ((1 - y) & p).sum(0), (y & (1 - p)).sum(0)], axis=-1))
    return np.stack(rows).astype(np.float64) if rows else np.zeros((0, len(CLASSES), 3))


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


# --- RSNA Intracranial Hemorrhage Detection metric -------------------------------------------

RSNA_EPS = 1e-7


def rsna_log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """RSNA's weighted multi-label log loss over six columns: the five types plus ``any`` (the
    max of the five, for labels and probabilities alike), weights 1 and ``any`` 2; probabilities
    clipped to [1e-7, 1 - 1e-7]; per slice the weighted sum divided by the sum of weights (7),
    then the mean over slices. Lets results be compared with the RSNA leaderboard."""
    from hemo_model.rsna import SUBMISSION_TYPES, with_any

    y = with_any(y_true)
    p = np.clip(with_any(probs), RSNA_EPS, 1.0 - RSNA_EPS)
    weights = np.array([2.0 if t == "any" else 1.0 for t in SUBMISSION_TYPES])
    losses = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    return float(np.mean(losses @ weights / weights.sum()))
