"""What the model steps (train, refine, evaluate, gate) share: reading their parameters, the
patient split, the device, the validation scorer and the learning-curve outputs.

Kept in one place so that every step sees the same validation patients for the same params,
which is what makes the gate's challenger-vs-champion comparison fair.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from components.errors import UserError
from components.files import write_csv_atomic, write_json_atomic
from components.params import section

METHOD_TRAIN = {
    "image_size": 512, "epochs": 20, "batch_size": 20, "lr": 1e-4, "weight_decay": 1e-4, "step_size": 10,
    "gamma": 0.5, "loss": "asl", "reduction": "sum", "gamma_neg": 4.0, "gamma_pos": 1.0, "clip": 0.05,
    "precision": "fp32", "seed": 0, "workers": 0, "cache_images": False, "max_steps": None,
}
METHOD_REFINE = {"epochs": 5,  # the method gives no epoch count for refinement
                  "batch_size": 12, "lr": 1e-6, "max_steps": None}
METHOD_SPLIT = {"val_fraction": 135 / 1535, "seed": 0}
METHOD_MODEL = {"head": "method", "dropout": 0.5, "pretrained": None}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="data folder in DLCV layout (params data.root)")
    parser.add_argument("--params", type=Path, help="params file (default: ./params.yaml if present)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="where to run (auto: cuda when available)")


def merged(params: dict[str, Any], name: str, defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Method defaults < params.yaml section < command-line flags (those not None)."""
    unknown = set(section(params, name)) - set(defaults)
    if unknown:
        raise UserError(f"params section '{name}' has unknown keys {sorted(unknown)}; allowed: {sorted(defaults)}")
    values = {**defaults, **section(params, name)}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return values


def loss_from(train_cfg: dict[str, Any]) -> Any:
    """The training loss of the `train` params (refinement uses the same one)."""
    from hemo_model.losses import build_loss

    if train_cfg["loss"] == "asl":
        return build_loss("asl", str(train_cfg["reduction"]), gamma_neg=float(train_cfg["gamma_neg"]),
                          gamma_pos=float(train_cfg["gamma_pos"]), clip=float(train_cfg["clip"]))
    try:
        return build_loss(str(train_cfg["loss"]), str(train_cfg["reduction"]))
    except ValueError as exc:
        raise UserError(f"params train.loss: {exc}") from exc


def resolve_device(choice: str) -> Any:
    import torch

    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def data_root(args: argparse.Namespace, params: dict[str, Any]) -> Path:
    return Path(args.data) if args.data else Path(section(params, "data").get("root", "data"))


def load_train_val(root: Path, params: dict[str, Any]) -> tuple[list, list]:
    """Labelled patients of ``root`` split by patient with the ``split`` params."""
    from hemo_model.data import DataError, load_split, split_patients

    split = merged(params, "split", METHOD_SPLIT, {})
    try:
        patients = load_split(root, "train")
        return split_patients(patients, float(split["val_fraction"]), int(split["seed"]))
    except DataError as exc:
        raise UserError(str(exc)) from exc


def model_config(params: dict[str, Any], image_size: int) -> Any:
    from hemo_model.model import ModelConfig

    cfg = merged(params, "model", METHOD_MODEL, {})
    return ModelConfig(head=str(cfg["head"]), dropout=float(cfg["dropout"]), image_size=image_size)


def pretrained_path(params: dict[str, Any]) -> Path | None:
    value = merged(params, "model", METHOD_MODEL, {})["pretrained"]
    if not value:
        return None
    path = Path(value)
    if not path.is_file():
        raise UserError(f"model.pretrained weights file {path} does not exist; give a local torchvision "
                        "resnet34 state_dict or set model.pretrained: null to train from scratch")
    return path


def validator(patients: list, image_size: int, weights: tuple[float, ...], device: Any, precision: str,
              cache: bool) -> Any:
    """``validate(model) -> micro-F2`` on the validation patients at threshold 0.5."""
    import torch

    from hemo_model.inference import score_sequences, stack_scores
    from hemo_model.metrics import micro_f2

    def validate(model: Any) -> float:
        slice_model = getattr(model, "slice_model", model)
        was_training = slice_model.training
        slice_model.eval()
        with torch.no_grad():
            scores = score_sequences(slice_model, patients, image_size, weights, device, precision, cache=cache)
        slice_model.train(was_training)
        probs, labels = stack_scores(scores)
        return micro_f2(labels, probs)

    return validate


def write_history(history: list[Any], csv_path: Path) -> None:
    """Epoch history as CSV (for `dvc plots`)."""
    rows = [asdict(h) for h in history]
    header = list(rows[0]) if rows else ["epoch"]
    write_csv_atomic(csv_path, header, ([row[k] for k in header] for row in rows))


def learning_curve_figure(history: list[Any], title: str) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h.epoch for h in history]
    fig, left = plt.subplots(figsize=(6, 4))
    left.plot(epochs, [h.train_loss for h in history], "o-", color="tab:blue", label="train loss")
    left.set_xlabel("epoch")
    left.set_ylabel("train loss", color="tab:blue")
    right = left.twinx()
    right.plot(epochs, [h.val_micro_f2 for h in history], "s-", color="tab:red", label="val micro-F2")
    right.set_ylabel("validation micro-F2", color="tab:red")
    right.set_ylim(0, 1)
    left.set_title(title)
    fig.tight_layout()
    return fig


def epoch_logger(rate_name: str) -> Any:
    """on_epoch callback: the epoch's loss, validation micro-F2, lr and throughput to MLflow."""
    import mlflow

    def log(record: Any) -> None:
        mlflow.log_metrics({"train_loss": record.train_loss, "val_micro_f2": record.val_micro_f2, "lr": record.lr,
                            rate_name: record.samples_per_s}, step=record.epoch)

    return log


def publish_fit(stage: str, history: list[Any], summary: dict[str, Any], reports: Path, title: str) -> None:
    """A finished fit's summary to MLflow and reports/<stage>.json, its history to
    reports/<stage>_history.csv (dvc plots) and its learning curve to MLflow."""
    import mlflow

    from components import tracking

    mlflow.log_metrics({k: float(v) for k, v in summary.items()})
    write_history(history, reports / f"{stage}_history.csv")
    write_json_atomic(reports / f"{stage}.json", summary)
    tracking.log_figure(learning_curve_figure(history, title), f"{stage}_curve.png")
