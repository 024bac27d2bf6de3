"""What a fit reports: per-epoch metrics to MLflow, the history as CSV (for `dvc plots`), the
learning curve, and the step's JSON summary.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow

from hemo_pipeline.services import tracking
from hemo_pipeline.services.files import write_csv_atomic, write_json_atomic


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


class FitReporter:
    """Where a training stage reports: MLflow on rank 0 (or a single process), nowhere on the other
    torchrun ranks. Stages report through it unconditionally, so which process logs is decided
    here, once."""

    def __init__(self, active: bool = True) -> None:
        self.active = active

    def params(self, flat: dict[str, Any]) -> None:
        if self.active:
            mlflow.log_params(flat)

    def nested_params(self, nested: dict[str, Any]) -> None:
        if self.active:
            tracking.log_params_flat(nested)

    def tag(self, key: str, value: str) -> None:
        if self.active:
            mlflow.set_tag(key, value)

    def metric(self, key: str, value: float) -> None:
        if self.active:
            mlflow.log_metric(key, value)

    def epochs(self, rate_name: str) -> Any:
        """The fit's on_epoch callback (None where nothing is reported)."""
        return epoch_logger(rate_name) if self.active else None


def epoch_logger(rate_name: str) -> Any:
    """on_epoch callback: the epoch's loss, validation micro-F2, lr and throughput to MLflow."""
    def log(record: Any) -> None:
        mlflow.log_metrics({"train_loss": record.train_loss, "val_micro_f2": record.val_micro_f2, "lr": record.lr,
                            rate_name: record.samples_per_s}, step=record.epoch)

    return log


def publish_fit(stage: str, history: list[Any], summary: dict[str, Any], reports: Path, title: str) -> None:
    """A finished fit's summary to MLflow and reports/<stage>.json, its history to
    reports/<stage>_history.csv (dvc plots) and its learning curve to MLflow."""

    mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
    write_history(history, reports / f"{stage}_history.csv")
    write_json_atomic(reports / f"{stage}.json", summary)
    tracking.log_figure(learning_curve_figure(history, title), f"{stage}_curve.png")
