"""The leaderboard metric (micro-F2 over all slice x class cells) and per-class diagnostics.

F2 weighs recall 4x over precision: missing a bleed costs more than a false alarm. The
arithmetic is scikit-learn's; this module only fixes the conventions (threshold 0.5 unless
tuned thresholds are given, zero_division=0, ROC-AUC undefined (NaN) for a class without
both labels present) and adds RSNA's weighted log loss.
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


DEFAULT_THRESHOLD = 0.5


def tune_thresholds(y_true: np.ndarray, probs: np.ndarray,
                    grid: Sequence[float] = tuple(np.round(np.arange(0.05, 0.96, 0.05), 2)),
                    min_positives: int = 0, groups: Sequence[str] | np.ndarray | None = None,
                    min_positive_groups: int = 0) -> list[float]:
    """Per-class threshold maximising that class's F2 on validation (ties: the one nearest 0.5).
    A class that :func:`untunable_classes` names keeps 0.5: a threshold fitted to a handful of
    positives, or to the slices of a few patients, follows them, not the class."""
    y = y_true.astype(np.int64)
    kept = set(untunable_classes(y, min_positives, groups, min_positive_groups))
    best = []
    for i in range(y.shape[1]):
        if i in kept:
            best.append(DEFAULT_THRESHOLD)
            continue
        scores = [(fbeta_score(y[:, i], (probs[:, i] >= t).astype(np.int64), beta=2, zero_division=0), -abs(t - 0.5), t)
                  for t in grid]
        best.append(float(max(scores)[2]))
    return best


def positive_groups(y_true: np.ndarray, groups: Sequence[str] | np.ndarray) -> np.ndarray:
    """Per class, how many distinct groups (patients: one key per slice) hold a positive slice."""
    y, keys = np.asarray(y_true), np.asarray(groups)
    if len(keys) != len(y):
        raise ValueError(f"{len(keys)} group keys for {len(y)} slices")
    return np.array([len(set(keys[y[:, i] > 0].tolist())) for i in range(y.shape[1])], dtype=np.int64)


def untunable_classes(y_true: np.ndarray, min_positives: int, groups: Sequence[str] | np.ndarray | None = None,
                      min_positive_groups: int = 0) -> list[int]:
    """Indices of the classes with fewer than ``min_positives`` positive slices in ``y_true`` or,
    given ``groups`` (a patient key per slice), positive in fewer than ``min_positive_groups``
    patients. The slices of one patient rise and fall together, so twenty positive slices from two
    patients are two observations, not twenty."""
    y = np.asarray(y_true)
    few = y.sum(axis=0) < min_positives
    if min_positive_groups > 0:
        if groups is None:
            raise ValueError("min_positive_groups needs the groups (a patient key per slice)")
        few |= positive_groups(y, groups) < min_positive_groups
    return [i for i in range(y.shape[1]) if few[i]]


RSNA_EPS = 1e-7


def rsna_log_loss(y_true: np.ndarray, probs: np.ndarray) -> float:
    """RSNA's weighted multi-label log loss over six columns: the five types plus ``any`` (the
    max of the five, for labels and probabilities alike), weights 1 and ``any`` 2; probabilities
    clipped to [1e-7, 1 - 1e-7]; per slice the weighted sum divided by the sum of weights (7),
    then the mean over slices. Lets results be compared with the RSNA leaderboard."""
    from hemo_model.data.rsna import SUBMISSION_TYPES, with_any

    y = with_any(y_true)
    p = np.clip(with_any(probs), RSNA_EPS, 1.0 - RSNA_EPS)
    weights = np.array([2.0 if t == "any" else 1.0 for t in SUBMISSION_TYPES])
    losses = -(y * np.log(p) + (1.0 - y) * np.log(1.0 - p))
    return float(np.mean(losses @ weights / weights.sum()))
