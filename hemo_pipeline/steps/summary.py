"""Print what the last pipeline run produced: micro-F2 single vs context, the gate decision,
the champion, the predictions, and how to open the MLflow UI."""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

from hemo_pipeline.services.tracking import is_embedded, tracking_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    parser.add_argument("--predictions", type=Path, default=Path("outputs/predictions.csv"))


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _rate(k: int, n: int, interval: list[float]) -> str:
    return f"{k}/{n} = {k / n:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if n else "n/a"


def _exam_lines(evaluation: dict) -> list[str]:
    """Exam-level figures on the gate patients: the flags, calibration, triage (issue 20)."""
    lines = []
    d, c, t = (evaluation.get(k) for k in ("exam_decisions_on_gate", "calibration", "triage_on_gate"))
    if d:
        sensitivity = _rate(d["true_positives"], d["positives"], d["sensitivity_interval"])
        specificity = _rate(d["true_negatives"], d["negatives"], d["specificity_interval"])
        lines.append(f"exams (gate, {d['exams']}): sensitivity {sensitivity}, specificity {specificity} (95 % exact)")
    if c and "ece_exam_calibrated" in c:
        lines.append(f"calibration (ECE, gate): slices {c['ece_slice_raw']:.4f} -> {c['ece_slice_calibrated']:.4f}, "
                     f"exams {c['ece_exam_raw']:.4f} -> {c['ece_exam_calibrated']:.4f}"
                     + (f" (a perfectly calibrated model: {c['ece_exam_calibrated_floor']:.4f}, 95 % below "
                        f"{c['ece_exam_calibrated_floor_p95']:.4f})" if "ece_exam_calibrated_floor" in c else "")
                     + ("" if c.get("stored_with_model", True) else " (not stored: evaluate.calibrate false)"))
    if t:
        missed = _rate(t["positives_low_risk"], t["positives"], t["low_risk_false_negative_rate_interval"])
        deferred = _rate(t["deferred"], t["exams"], t["deferral_fraction_interval"])
        lines.append(f"triage (gate): bleeds called low risk {missed}, deferred {deferred}; reports/triage_report.md")
    for r in evaluation.get("subgroups_on_gate") or []:
        ece = r.get("ece_exam_calibrated")
        lines.append(f"  {r['column']} {r['value']} ({r['exams']} exams): sensitivity "
                     f"{_rate(r['true_positives'], r['positives'], r['sensitivity_interval'])}, specificity "
                     f"{_rate(r['true_negatives'], r['negatives'], r['specificity_interval'])}"
                     + (f", exam ECE {ece:.4f}" if ece is not None else ""))
    pointing = evaluation.get("pointing_on_gate") or {}
    if pointing.get("status") == "played":
        rows = [f"{name} {_rate(r['hits'], r['maps'], r['hit_rate_interval'])}"
                for name, r in pointing["classes"].items() if r["maps"]]
        lines.append("overlays point at the lesion (pointing game, gate): " + ("; ".join(rows) or "no map checked"))
    elif pointing:
        lines.append(f"pointing game: {pointing['status']}")
    return lines


def run(args: argparse.Namespace) -> int:
    evaluation = _read(args.reports / "evaluate.json")
    gate = _read(args.reports / "gate.json")
    train = _read(args.reports / "train.json")
    lines = ["", "=== hemo-pipeline summary ==="]
    if train:
        kept = f"kept epoch {train['best_epoch']} of {train['epochs']}"
        if train.get("selection"):
            kept += f" (selection '{train['selection']}')"
        lines.append(f"training: {kept}, {train['seconds']} s, {train['train_samples_per_s']} slices/s")
    if evaluation:
        lines.append(f"held-out gate patients, micro-F2: single slice {evaluation['micro_f2_single']:.4f} | 5-slice context "
                     f"{evaluation['micro_f2_context']:.4f} | context + tuned thresholds "
                     f"{evaluation['micro_f2_context_tuned']:.4f}")
        lines += _exam_lines(evaluation)
    if gate:
        verdict = "promoted to @champion" if gate["promoted"] else "not promoted"
        lines.append(f"gate: challenger v{gate['challenger_version']} {verdict} ({gate['reason']}); "
                     f"champion is now v{gate['champion_version_after']}")
    if args.predictions.is_file():
        rows = sum(1 for _ in args.predictions.open()) - 1
        lines.append(f"predictions: {args.predictions} ({rows} slices) and "
                     f"{args.predictions.with_name(args.predictions.stem + '_leaderboard.csv')}")
    exams = args.predictions.with_name("exams.csv")
    if exams.is_file():
        with exams.open(newline="") as handle:
            bins = Counter(row["triage"] for row in csv.DictReader(handle))
        lines.append(f"exams: {exams} ({sum(bins.values())} exams: "
                     + ", ".join(f"{bins.get(b, 0)} {b}" for b in ("high_risk", "defer", "low_risk")) + ")")
    uri = tracking_uri()
    if is_embedded():
        lines.append("MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db "
                     "--default-artifact-root ./mlartifacts  then open http://127.0.0.1:5000")
    else:
        lines.append(f"MLflow UI: {uri}")
    print("\n".join(lines))
    return 0
