"""Gate: promote the challenger to champion only if it is better on the same patients.

Loads `@challenger` and the current `@champion` from the registry, scores both on the same
validation patients (5-slice context, threshold 0.5, each model at its own image size), and
moves `champion` to the challenger only if its micro-F2 beats the champion's by at least
`gate.min_improvement` and reaches `gate.min_f2` (first model: the floor only). The decision, both
scores and the reason are logged to MLflow, tagged on the model version and written to
reports/gate.json. A rejected challenger keeps its alias; the champion is untouched.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from components.errors import UserError
from components.files import write_json_atomic
from components.model_steps import add_common_arguments, data_root, load_train_val, merged, resolve_device
from components.params import load_params

METHOD_GATE = {"min_improvement": 0.005, "min_f2": 0.3, "precision": "fp32", "batch_size": 32}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="where gate.json goes")
    parser.add_argument("--min-improvement", type=float, help="params gate.min_improvement")
    parser.add_argument("--min-f2", type=float, help="params gate.min_f2 (floor for any champion)")


def decide(challenger_f2: float, champion_f2: float | None, min_improvement: float, min_f2: float) -> tuple[bool, str]:
    """The promotion rule, kept pure so it can be tested on its own."""
    if challenger_f2 < min_f2:
        return False, f"challenger micro-F2 {challenger_f2:.4f} is below the floor gate.min_f2={min_f2}"
    if champion_f2 is None:
        return True, f"no champion yet and challenger micro-F2 {challenger_f2:.4f} >= floor {min_f2}"
    gain = challenger_f2 - champion_f2
    if gain > 0 and gain >= min_improvement:
        return True, f"challenger beats champion by {gain:+.4f} (>= {min_improvement})"
    return False, f"challenger {challenger_f2:.4f} vs champion {champion_f2:.4f}: gain {gain:+.4f} < {min_improvement}"


def _score(loaded: Any, patients: list, device: Any, precision: str, batch_size: int) -> float:
    from hemo_model.inference import prepare_for_inference, score_sequences, stack_scores
    from hemo_model.metrics import micro_f2

    module = prepare_for_inference(loaded.module, device)
    scores = score_sequences(module, patients, loaded.image_size, loaded.context_weights, device, precision,
                             batch_size)
    probs, labels = stack_scores(scores)
    return micro_f2(labels, probs)


def run(args: argparse.Namespace) -> int:
    import mlflow

    from components import tracking

    params = load_params(args.params)
    cfg = merged(params, "gate", METHOD_GATE, {"min_improvement": args.min_improvement, "min_f2": args.min_f2})
    tracking.configure()
    challenger_version = tracking.alias_version(tracking.CHALLENGER)
    if challenger_version is None:
        raise UserError(f"no version of '{tracking.MODEL_NAME}' has alias @{tracking.CHALLENGER} at "
                        f"{tracking.tracking_uri()}; run `hemo evaluate` first")
    champion_version = tracking.alias_version(tracking.CHAMPION)
    device = resolve_device(args.device)
    _, val_patients = load_train_val(data_root(args, params), params)
    precision, batch = str(cfg["precision"]), int(cfg["batch_size"])

    uri = f"models:/{tracking.MODEL_NAME}/"
    challenger_f2 = _score(tracking.load_model(uri + challenger_version), val_patients, device, precision, batch)
    if champion_version == challenger_version:
        promote, reason = False, f"challenger v{challenger_version} is already the champion"
        champion_f2: float | None = challenger_f2
    else:
        champion_f2 = None
        if champion_version is not None:
            champion_f2 = _score(tracking.load_model(uri + champion_version), val_patients, device, precision, batch)
        promote, reason = decide(challenger_f2, champion_f2, float(cfg["min_improvement"]), float(cfg["min_f2"]))

    client = mlflow.MlflowClient()
    with tracking.step_run("gate", params):
        tracking.log_params_flat({"gate": cfg})
        mlflow.log_params({"challenger_version": challenger_version, "champion_version_before": champion_version})
        mlflow.log_metrics({"challenger_micro_f2": challenger_f2, "promoted": float(promote),
                            **({"champion_micro_f2": champion_f2} if champion_f2 is not None else {})})
        mlflow.set_tag("hemo.gate_reason", reason)
        if promote:
            client.set_registered_model_alias(tracking.MODEL_NAME, tracking.CHAMPION, challenger_version)
        client.set_model_version_tag(tracking.MODEL_NAME, challenger_version, "gate.decision",
                                     "promoted" if promote else "rejected")
        client.set_model_version_tag(tracking.MODEL_NAME, challenger_version, "gate.reason", reason)

    decision = {
        "promoted": promote, "reason": reason, "challenger_version": challenger_version,
        "challenger_micro_f2": challenger_f2, "champion_version_before": champion_version,
        "champion_micro_f2": champion_f2,
        "champion_version_after": challenger_version if promote else champion_version,
        "min_improvement": float(cfg["min_improvement"]), "min_f2": float(cfg["min_f2"]),
        "validation_patients": len(val_patients),
    }
    write_json_atomic(args.reports / "gate.json", decision)
    verdict = "PROMOTED to @champion" if promote else "NOT promoted"
    print(f"gate: challenger v{challenger_version} {verdict}: {reason}")
    return 0
