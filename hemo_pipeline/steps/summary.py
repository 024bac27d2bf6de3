"""Print what the last pipeline run produced: micro-F2 single vs context, the gate decision,
the champion, the predictions, and how to open the MLflow UI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hemo_pipeline.services.tracking import is_embedded, tracking_uri


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reports", type=Path, default=Path("reports"))
    parser.add_argument("--predictions", type=Path, default=Path("outputs/predictions.csv"))


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


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
    if gate:
        verdict = "promoted to @champion" if gate["promoted"] else "not promoted"
        lines.append(f"gate: challenger v{gate['challenger_version']} {verdict} ({gate['reason']}); "
                     f"champion is now v{gate['champion_version_after']}")
    if args.predictions.is_file():
        rows = sum(1 for _ in args.predictions.open()) - 1
        lines.append(f"predictions: {args.predictions} ({rows} slices) and "
                     f"{args.predictions.with_name(args.predictions.stem + '_leaderboard.csv')}")
    uri = tracking_uri()
    if is_embedded():
        lines.append("MLflow UI: .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db "
                     "--default-artifact-root ./mlartifacts  then open http://127.0.0.1:5000")
    else:
        lines.append(f"MLflow UI: {uri}")
    print("\n".join(lines))
    return 0
