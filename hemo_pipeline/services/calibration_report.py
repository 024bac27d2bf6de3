"""How well the served probabilities are calibrated, per slice and per exam, before and after
per-class Platt scaling (a temperature and a shift of the logits) fitted on `val`, slices first and
then the exam columns on the val exams (issue 20's first measurement; serving does not apply it
yet). Temperature alone is not enough here: ASL spares easy
negatives and so shifts the logits, which a scale cannot undo.

The mode is the one the version is served in (5-slice context or single slices). Exams are the
patients' series: a class's exam label is whether any slice shows it, its probability the
exam rule's (max over slices, :mod:`hemo_model.inference.exam`), and "any hemorrhage" a sixth
column. Every figure comes with the number of slices or exams it rests on: on a dozen gate exams an
exam-level ECE is a rough reading.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hemo_model import CLASSES
from hemo_model.inference.calibration import calibrated_probabilities, fit_platt_per_class
from hemo_model.inference.exam import exam_probabilities
from hemo_model.metrics.calibration import expected_calibration_error, reliability

EXAM_COLUMNS = ("any", *CLASSES)


@dataclass(frozen=True)
class CalibrationReport:
    temperatures: tuple[float, ...]
    shifts: tuple[float, ...]
    metrics: dict[str, float]
    """ece_{slice,exam}_{raw,calibrated}, n_slices, n_exams"""
    slice_probs: dict[str, np.ndarray]
    slice_labels: np.ndarray
    exam_probs: dict[str, np.ndarray]
    exam_labels: np.ndarray


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def _served_logits(scores: Sequence[Any], use_context: bool) -> list[np.ndarray]:
    return [s.logits if use_context else s.slice_logits for s in scores]


def _exam_table(per_patient_probs: list[np.ndarray], per_patient_labels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(exams, 6) probabilities and labels: any hemorrhage, then each class."""
    probs, labels = [], []
    for p, y in zip(per_patient_probs, per_patient_labels, strict=True):
        anything, per_class = exam_probabilities(p)
        probs.append(np.r_[anything, per_class])
        positive = np.asarray(y).astype(bool)
        labels.append(np.r_[positive.any(), positive.any(axis=0)])
    return np.array(probs, dtype=np.float64), np.array(labels, dtype=np.float64)


def calibration_report(val_scores: Sequence[Any], gate_scores: Sequence[Any], use_context: bool,
                       bins: int = 10) -> CalibrationReport:
    """Temperatures fitted on the val scores' served logits, judged on the gate scores."""
    val_logits = np.concatenate(_served_logits(val_scores, use_context))
    val_labels = np.concatenate([s.patient.labels for s in val_scores])
    temperatures, shifts = fit_platt_per_class(val_logits, val_labels)
    gate_logits = _served_logits(gate_scores, use_context)
    gate_labels = [np.asarray(s.patient.labels) for s in gate_scores]
    raw = [1.0 / (1.0 + np.exp(-z)) for z in gate_logits]
    scaled = [calibrated_probabilities(z, temperatures, shifts) for z in gate_logits]
    slice_labels = np.concatenate(gate_labels)
    slice_probs = {"raw": np.concatenate(raw), "calibrated": np.concatenate(scaled)}
    exam_raw, exam_labels = _exam_table(raw, gate_labels)
    # the max over a series' calibrated slices is not itself calibrated (the more slices, the higher):
    # the exam columns get their own Platt scaling, fitted on the val exams
    val_exams, val_exam_labels = _exam_table(
        [calibrated_probabilities(z, temperatures, shifts) for z in _served_logits(val_scores, use_context)],
        [np.asarray(s.patient.labels) for s in val_scores])
    exam_t, exam_s = fit_platt_per_class(_logit(val_exams), val_exam_labels)
    exam_scaled = calibrated_probabilities(_logit(_exam_table(scaled, gate_labels)[0]), exam_t, exam_s)
    exam_probs = {"raw": exam_raw, "calibrated": exam_scaled}
    metrics = {f"ece_slice_{k}": expected_calibration_error(slice_labels, v, bins) for k, v in slice_probs.items()}
    metrics.update({f"ece_exam_{k}": expected_calibration_error(exam_labels, v, bins) for k, v in exam_probs.items()})
    metrics.update({"n_calibration_slices": float(len(val_labels)), "n_calibration_exams": float(len(val_exams)),
                    "n_gate_slices": float(len(slice_labels)), "n_gate_exams": float(len(exam_labels))})
    return CalibrationReport(temperatures, shifts, metrics, slice_probs, slice_labels, exam_probs, exam_labels)


def reliability_figure(report: CalibrationReport, bins: int = 10) -> Any:
    """Reliability diagrams, slices and exams, raw and after Platt scaling."""
    from hemo_pipeline.services.plots import plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    panels = (("slices", report.slice_probs, report.slice_labels, "slice"),
              ("exams (any + 5 classes)", report.exam_probs, report.exam_labels, "exam"))
    for ax, (name, probs, labels, level) in zip(axes, panels):
        for kind, style in (("raw", "o-"), ("calibrated", "s-")):
            table = reliability(labels, probs[kind], bins)
            filled = table.counts > 0
            ax.plot(table.confidence[filled], table.frequency[filled], style,
                    label=f"{kind}: ECE {report.metrics[f'ece_{level}_{kind}']:.3f}")
        ax.plot([0, 1], [0, 1], "k:", linewidth=0.8)
        ax.set(xlabel="mean predicted probability", ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1),
               title=f"gate {name}, n = {len(labels)}")
        ax.legend(loc="upper left")
    fig.suptitle("calibration: Platt scaling (temperature and shift) fitted per class on val")
    fig.tight_layout()
    return fig
