"""How well the served probabilities are calibrated, per slice and per exam, before and after the
calibration `hemo evaluate` fits on `val` and stores in the spec (per-class Platt scaling of the
slice logits, then of the exam columns; :mod:`hemo_model.inference.calibrated`), and what the
triage bins fitted on val do on the gate patients. Temperature alone is not enough here: ASL
spares easy negatives and so shifts the logits, which a scale cannot undo.

The mode is the one the version is served in (5-slice context or single slices). Exams are the
patients' series: a class's exam label is whether any slice shows it, its probability the
exam rule's (max over slices), and "any hemorrhage" a sixth column. Every figure comes with the
number of slices or exams it rests on: on a dozen gate exams an exam-level ECE is a rough reading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hemo_model.data.subgroups import by_group
from hemo_model.inference.calibrated import exam_labels, exam_table, fit_calibration, score_exam, slice_probabilities
from hemo_model.inference.triage import clopper_pearson, triage_report
from hemo_model.metrics.calibration import ece_of_a_calibrated_model, expected_calibration_error, reliability
from hemo_model.model.spec import EXAM_COLUMNS, Calibration


@dataclass(frozen=True)
class CalibrationReport:
    calibration: Calibration
    metrics: dict[str, float]
    """ece_{slice,exam}_{raw,calibrated}; ece_{slice,exam}_calibrated_floor(_p95): the mean and 95th
    percentile ECE a perfectly calibrated model would read on as many predictions; n_* counts"""
    triage: dict[str, Any]
    """:func:`hemo_model.inference.triage.triage_report` on the gate exams"""
    exam_decisions: dict[str, Any]
    """Exam-level sensitivity and specificity for any hemorrhage of the served 0/1 flags (an exam is
    flagged when any slice is flagged for any type), with counts and exact intervals"""
    slice_probs: dict[str, np.ndarray]
    slice_labels: np.ndarray
    exam_probs: dict[str, np.ndarray]
    exam_labels: np.ndarray
    exam_bins: np.ndarray
    exam_names: list[str]
    exam_flagged: np.ndarray
    """Per gate exam: any slice flagged for any type at the served thresholds."""

    @property
    def temperatures(self) -> tuple[float, ...]:
        return self.calibration.slice_temperatures

    @property
    def shifts(self) -> tuple[float, ...]:
        return self.calibration.slice_shifts


def _served_logits(scores: Sequence[Any], use_context: bool) -> list[np.ndarray]:
    return [s.logits if use_context else s.slice_logits for s in scores]


def calibration_report(val_scores: Sequence[Any], gate_scores: Sequence[Any], use_context: bool,
                       low_risk_target: float, high_risk_target: float, thresholds: Sequence[float],
                       fitted_on_trained_patients: bool = False, bins: int = 10) -> CalibrationReport:
    """The calibration fitted on the val scores' served logits, judged on the gate scores; the exam
    decisions at the served ``thresholds``."""
    calibration = fit_calibration(_served_logits(val_scores, use_context),
                                  [np.asarray(s.patient.labels) for s in val_scores],
                                  "context" if use_context else "single", low_risk_target, high_risk_target,
                                  fitted_on_trained_patients)
    gate_logits = _served_logits(gate_scores, use_context)
    gate_labels = [np.asarray(s.patient.labels) for s in gate_scores]
    raw = [slice_probabilities(z, None) for z in gate_logits]
    slice_labels = np.concatenate(gate_labels)
    slice_probs = {"raw": np.concatenate(raw),
                   "calibrated": np.concatenate([slice_probabilities(z, calibration) for z in gate_logits])}
    exams = [score_exam(z, calibration) for z in gate_logits]
    truth = exam_labels(gate_labels)
    exam_probs = {"raw": exam_table(raw), "calibrated": np.array([e.probabilities for e in exams])}
    exam_bins = np.array([e.bin for e in exams])
    metrics = {f"ece_slice_{k}": expected_calibration_error(slice_labels, v, bins) for k, v in slice_probs.items()}
    metrics.update({f"ece_exam_{k}": expected_calibration_error(truth, v, bins) for k, v in exam_probs.items()})
    for level, probs in (("slice", slice_probs["calibrated"]), ("exam", exam_probs["calibrated"])):
        # what a perfectly calibrated model would read on these predictions: the floor to judge by
        mean, high = ece_of_a_calibrated_model(probs, bins)
        metrics.update({f"ece_{level}_calibrated_floor": mean, f"ece_{level}_calibrated_floor_p95": high})
    metrics.update({"n_calibration_slices": float(calibration.n_slices), "n_calibration_exams": float(calibration.n_exams),
                    "n_gate_slices": float(len(slice_labels)), "n_gate_exams": float(len(truth))})
    flagged = np.array([(p >= np.asarray(thresholds)).any() for p in raw])
    return CalibrationReport(calibration, metrics, triage_report(exam_bins, truth[:, 0]),
                             exam_decision_report(flagged, truth[:, 0].astype(bool)), slice_probs, slice_labels,
                             exam_probs, truth, exam_bins, [s.patient.dirname for s in gate_scores], flagged)


def exam_decision_report(flagged: np.ndarray, bleeding: np.ndarray) -> dict[str, Any]:
    """Sensitivity and specificity of exam-level flags, with their counts and 95 % exact intervals."""
    found, positives = int((flagged & bleeding).sum()), int(bleeding.sum())
    cleared, negatives = int((~flagged & ~bleeding).sum()), int((~bleeding).sum())
    return {"exams": len(flagged), "positives": positives, "negatives": negatives,
            "true_positives": found, "true_negatives": cleared,
            "sensitivity": found / positives if positives else float("nan"),
            "sensitivity_interval": clopper_pearson(found, positives),
            "specificity": cleared / negatives if negatives else float("nan"),
            "specificity_interval": clopper_pearson(cleared, negatives)}


def exam_decision_line(decisions: dict[str, Any]) -> str:
    d = decisions
    return (f"exam-level flags (any type on any slice) on {d['exams']} gate exams: sensitivity "
            f"{_rate(d['true_positives'], d['positives'], d['sensitivity_interval'])}, specificity "
            f"{_rate(d['true_negatives'], d['negatives'], d['specificity_interval'])}")


def _rate(k: int, n: int, interval: tuple[float, float]) -> str:
    if n == 0:
        return "n/a (none)"
    return f"{k}/{n} = {k / n:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def low_risk_needs(target: float) -> int:
    """Positive calibration exams needed before any exam can be called low risk at ``target``."""
    return math.ceil(1.0 / target - 1.0 - 1e-9)


def triage_line(report: CalibrationReport) -> str:
    """One line: the cut-offs fitted on val and what they did on the gate exams."""
    c, t = report.calibration, report.triage
    low = (f"low risk below P(any) {c.low_risk_below:.3f}" if 0.0 < c.low_risk_below <= 1.0 else
           f"no low-risk bin ({c.n_positive_exams} positive val exams; {low_risk_needs(c.low_risk_target)} needed "
           f"for a false-negative rate <= {c.low_risk_target:g})")
    high = (f"high risk above {c.high_risk_above:.3f}" if 0.0 <= c.high_risk_above < 1.0 else "no high-risk bin")
    missed = _rate(t["positives_low_risk"], t["positives"], t["low_risk_false_negative_rate_interval"])
    alarms = _rate(t["negatives_high_risk"], t["negatives"], t["high_risk_false_positive_rate_interval"])
    deferred = _rate(t["deferred"], t["exams"], t["deferral_fraction_interval"])
    return (f"triage cut-offs fitted on {c.n_exams} val exams: {low}, {high}; on the {t['exams']} gate exams "
            f"bleeds called low risk {missed}, non-bleeds called high risk {alarms}, deferred {deferred} "
            "(95 % Clopper-Pearson)")


def triage_markdown(report: CalibrationReport, stored: bool, subgroups: Sequence[dict[str, Any]] = (),
                    sections: Sequence[str] = ()) -> str:
    """reports/triage_report.md: what a reader of the worklist needs to trust it, from the gate patients
    (``sections``: further markdown lines, such as the pointing game's, before the table of exams)."""
    c, t, m = report.calibration, report.triage, report.metrics
    lines = [
        "# Triage report (gate patients)",
        "",
        "Written by `hemo evaluate`. Calibration and triage cut-offs are fitted on the `val` role and judged "
        "here on the gate patients, which neither training nor fitting saw"
        + (" (except: the model trained on the val patients, train.refit_on_val, so the calibration is optimistic)"
           if c.fitted_on_trained_patients else "") + ". "
        + ("They are stored with the registered version and applied by `hemo score`." if stored else
           "They are reported, not stored (evaluate.calibrate false, or a model trained on its val patients): "
           "`hemo score` defers every exam."),
        "",
        "## Triage",
        "",
        f"- {triage_line(report)}.",
        f"- Targets: bleeding exams called low risk <= {c.low_risk_target:g}, exams without a bleed called "
        f"high risk <= {c.high_risk_target:g} (split conformal risk control on {c.n_exams} val exams, "
        f"{c.n_positive_exams} with a bleed).",
        f"- **Bleeds that reached low risk: {t['positives_low_risk']} of {t['positives']}.**",
        f"- The 0/1 flags at the stored thresholds, per exam: {exam_decision_line(report.exam_decisions)} "
        "(95 % Clopper-Pearson).",
        "",
        "## Calibration (expected calibration error, 10 bins)",
        "",
        "| level | n | before | after | a perfectly calibrated model would read (mean, 95 % of draws below) |",
        "|---|---|---|---|---|",
        f"| slices | {m['n_gate_slices']:.0f} | {m['ece_slice_raw']:.4f} | {m['ece_slice_calibrated']:.4f} "
        f"| {m['ece_slice_calibrated_floor']:.4f}, {m['ece_slice_calibrated_floor_p95']:.4f} |",
        f"| exams (any + 5 types) | {m['n_gate_exams']:.0f} x 6 | {m['ece_exam_raw']:.4f} | {m['ece_exam_calibrated']:.4f} "
        f"| {m['ece_exam_calibrated_floor']:.4f}, {m['ece_exam_calibrated_floor_p95']:.4f} |",
        "",
        "ECE reads above 0 even for a perfectly calibrated model on few predictions: the last column is what one "
        "would show with the calibrated probabilities above (labels drawn from them); an ECE below its 95 % "
        "figure is as good as this many exams can show.",
        "",
        "![reliability](plots/reliability.png)",
        "",
        *subgroup_markdown(subgroups),
        *sections,
        "## Gate exams",
        "",
        "| exam | bleed | P(any) | bin |",
        "|---|---|---|---|",
    ]
    for name, truth, probs, bin_ in zip(report.exam_names, report.exam_labels, report.exam_probs["calibrated"],
                                        report.exam_bins, strict=True):
        lines.append(f"| {name} | {', '.join(col for col, y in zip(EXAM_COLUMNS[1:], truth[1:]) if y) or 'none'} "
                     f"| {probs[0]:.3f} | {bin_} |")
    return "\n".join(lines) + "\n"



def subgroup_report(report: CalibrationReport, groups: Mapping[str, Mapping[str, str]],
                    bins: int = 10) -> list[dict[str, Any]]:
    """Every exam-level figure of the report again per subgroup of the gate exams (``groups``:
    :func:`hemo_model.data.subgroups.read_subgroups`): the flags' sensitivity and specificity, the
    exam ECE before and after calibration, bleeds called low risk and the deferral fraction, each
    rate with its exact interval. One row per (column, value); a column's rows add up to all exams."""
    rows = []
    for (column, value), index in by_group(report.exam_names, groups).items():
        at = np.asarray(index)
        truth, bleeding = report.exam_labels[at], report.exam_labels[at, 0].astype(bool)
        rows.append({"column": column, "value": value, "exams": len(at),
                     **exam_decision_report(report.exam_flagged[at], bleeding),
                     "ece_exam_raw": expected_calibration_error(truth, report.exam_probs["raw"][at], bins),
                     "ece_exam_calibrated": expected_calibration_error(truth, report.exam_probs["calibrated"][at], bins),
                     "triage": triage_report(report.exam_bins[at], truth[:, 0])})
    return rows


def subgroup_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per subgroup, the figures that matter to a worklist."""
    return [f"{r['column']} {r['value']}: {r['exams']} gate exams, sensitivity "
            f"{_rate(r['true_positives'], r['positives'], r['sensitivity_interval'])}, specificity "
            f"{_rate(r['true_negatives'], r['negatives'], r['specificity_interval'])}, exam ECE "
            f"{r['ece_exam_raw']:.4f} -> {r['ece_exam_calibrated']:.4f}, bleeds called low risk "
            f"{_rate(r['triage']['positives_low_risk'], r['positives'], r['triage']['low_risk_false_negative_rate_interval'])}"
            f", deferred {_rate(r['triage']['deferred'], r['exams'], r['triage']['deferral_fraction_interval'])}"
            for r in rows]


def subgroup_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report's section: a table per subgroup column, every rate with its 95 % interval."""
    lines = ["## By subgroup (gate exams)", ""]
    if not rows:
        return lines + ["The data set carries no subgroups (no subgroups.csv: `hemo import-dicom` writes scanner, "
                        "slice thickness and matrix bands; `hemo synth` the phantom's scanner).", ""]
    lines += ["Each rate with its 95 % Clopper-Pearson interval; a subgroup of a few exams tells little, and the "
              "intervals say how little.", "",
              "| subgroup | exams (bleeds) | sensitivity | specificity | exam ECE before -> after | bleeds called low "
              "risk | deferred |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        t = r["triage"]
        lines.append(
            f"| {r['column']} = {r['value']} | {r['exams']} ({r['positives']}) "
            f"| {_rate(r['true_positives'], r['positives'], r['sensitivity_interval'])} "
            f"| {_rate(r['true_negatives'], r['negatives'], r['specificity_interval'])} "
            f"| {r['ece_exam_raw']:.4f} -> {r['ece_exam_calibrated']:.4f} "
            f"| {_rate(t['positives_low_risk'], r['positives'], t['low_risk_false_negative_rate_interval'])} "
            f"| {_rate(t['deferred'], r['exams'], t['deferral_fraction_interval'])} |")
    return lines + [""]


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
