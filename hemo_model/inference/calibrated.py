"""Fitting a :class:`~hemo_model.model.spec.Calibration` on labelled exams and applying it: the one
path from served logits to calibrated slice probabilities, exam probabilities and a triage bin,
shared by `hemo evaluate` (which fits and judges it) and `hemo score` (which applies it).

Fitting (on the `val` role, exams that played no part in training):
1. per class Platt scaling of the slice logits (:func:`~hemo_model.inference.calibration.fit_platt`,
   Platt's smoothed targets; classes with few positives take the pooled fit, :data:`MIN_EACH`);
2. the exam rule (max over slices; "any" = max over classes first) on the calibrated slices, then
   Platt scaling per exam column (pooled the same way) on the logit of that maximum: a series'
   maximum grows with its length, so it needs its own calibration;
3. conformal cut-offs on the calibrated P(any) (:func:`~hemo_model.inference.triage.fit_triage`).
Steps 1-2 are fitted on the same exams as step 3. Step 2 is monotone per column, so it does not
change which val exams fall below a cut-off; step 1 can reorder exams on P(any) slightly (classes
are scaled differently), a dependence the finite-sample guarantee does not cover: with a separate
calibration role it would be exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from hemo_model.inference.calibration import calibrated_probabilities, fit_platt_per_class
from hemo_model.inference.exam import evidence_slices, exam_probabilities
from hemo_model.inference.triage import DEFER, TriageRule, fit_triage
from hemo_model.model.spec import Calibration

MIN_EACH = 10
"""A class (or exam column) is scaled on its own only with this many positive and negative val
slices (exams); below, it takes the fit pooled over all classes (columns). On the demo's 11 val
exams this pools every exam column: per-column fits on them reached T at its bound (separable
columns) and left EDH (no positive) raw. On make run's checkpoint (12 gate exams, 394 slices) the
gate ECE went, raw -> per-class fits -> pooled with Platt's smoothed targets: slices 0.3161 ->
0.1208 -> 0.0357, exams 0.3228 -> 0.1947 -> 0.0857."""


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def exam_table(per_exam_probs: Sequence[np.ndarray]) -> np.ndarray:
    """(exams, 6): each exam's probability of any hemorrhage, then of each class (the max rule)."""
    rows = []
    for p in per_exam_probs:
        anything, per_class = exam_probabilities(p)
        rows.append(np.r_[anything, per_class])
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)


def exam_labels(per_exam_labels: Sequence[np.ndarray]) -> np.ndarray:
    """(exams, 6) 0/1: whether any slice shows any class, then each class."""
    rows = [np.r_[np.asarray(y).astype(bool).any(), np.asarray(y).astype(bool).any(axis=0)] for y in per_exam_labels]
    return np.array(rows, dtype=np.float64)


def fit_calibration(logits: Sequence[np.ndarray], labels: Sequence[np.ndarray], mode: str, low_risk_target: float,
                    high_risk_target: float, fitted_on_trained_patients: bool = False) -> Calibration:
    """The calibration of served ``logits`` (one (slices, classes) array per exam, in scoring mode
    ``mode``) against their 0/1 ``labels``, with triage cut-offs at the two target rates."""
    if len(logits) == 0 or len(logits) != len(labels):
        raise ValueError(f"need labels for every exam and at least one exam, got {len(logits)} and {len(labels)}")
    slice_t, slice_s = fit_platt_per_class(np.concatenate(logits), np.concatenate(labels), MIN_EACH, smoothed=True)
    exams = exam_table([calibrated_probabilities(z, slice_t, slice_s) for z in logits])
    truth = exam_labels(labels)
    exam_t, exam_s = fit_platt_per_class(_logit(exams), truth, MIN_EACH, smoothed=True)
    p_any = calibrated_probabilities(_logit(exams), exam_t, exam_s)[:, 0]
    rule = fit_triage(p_any, truth[:, 0], low_risk_target, high_risk_target)
    return Calibration(mode=mode, slice_temperatures=slice_t, slice_shifts=slice_s, exam_rule="max",
                       exam_temperatures=exam_t, exam_shifts=exam_s, low_risk_below=rule.low_below,
                       high_risk_above=rule.high_above, low_risk_target=low_risk_target,
                       high_risk_target=high_risk_target, n_slices=int(sum(len(z) for z in logits)),
                       n_exams=len(logits), n_positive_exams=int(truth[:, 0].sum()),
                       fitted_on_trained_patients=fitted_on_trained_patients)


def slice_probabilities(logits: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """Calibrated probabilities of one exam's served logits (plain sigmoid without a calibration)."""
    if calibration is None:
        return _sigmoid(logits)
    return calibrated_probabilities(logits, calibration.slice_temperatures, calibration.slice_shifts)


@dataclass(frozen=True)
class ExamScore:
    """One exam (series): calibrated probabilities (any, then each class), its triage bin and the
    evidence (slice indices, most suspicious first: per class, then for any)."""

    probabilities: np.ndarray
    bin: str
    evidence: list[list[int]]


def score_exam(logits: np.ndarray, calibration: Calibration | None, evidence: int = 3) -> ExamScore:
    """An exam's answer from its served slice logits. Without a calibration the probabilities are
    the raw exam rule's and the bin is always "defer": uncalibrated scores carry no guarantee."""
    slices = slice_probabilities(logits, calibration)
    table = exam_table([slices])
    if calibration is None:
        return ExamScore(table[0], DEFER, evidence_slices(slices, evidence))
    probs = calibrated_probabilities(_logit(table), calibration.exam_temperatures, calibration.exam_shifts)[0]
    return ExamScore(probs, str(triage_bins(probs[:1], calibration)[0]), evidence_slices(slices, evidence))


def triage_bins(p_any: np.ndarray, calibration: Calibration) -> np.ndarray:
    """The bin of each calibrated P(any) under the stored cut-offs (low risk, defer, high risk)."""
    rule = TriageRule(calibration.low_risk_below, calibration.high_risk_above, calibration.low_risk_target,
                      calibration.high_risk_target, calibration.n_positive_exams,
                      calibration.n_exams - calibration.n_positive_exams)
    return rule.assign(np.asarray(p_any, dtype=np.float64))
