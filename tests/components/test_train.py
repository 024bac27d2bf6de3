"""`hemo train` with the default embedded MLflow store (sqlite:///mlflow.db): outputs, the
run tree and its tags, and --resume continuing a run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mlflow
import pytest

from components.cli import main


def test_train_logs_to_embedded_store_and_resumes(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--max-steps", "2"]) == 0
    assert (workdir / "mlflow.db").is_file()
    assert (workdir / "outputs/train/best.pt").is_file() and (workdir / "outputs/train/last.pt").is_file()
    summary = json.loads((workdir / "reports/train.json").read_text())
    assert summary["best_epoch"] == 1 and 0.0 <= summary["best_val_micro_f2_single"] <= 1.0

    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list")
    train_run = next(r for r in runs if r.data.tags.get("hemo.step") == "train")
    parent = json.loads((workdir / "outputs/pipeline_run.json").read_text())["run_id"]
    assert train_run.data.tags["mlflow.parentRunId"] == parent
    for tag in ("mlflow.source.git.commit", "hemo.data_md5", "hemo.params_hash"):
        assert train_run.data.tags[tag]
    assert train_run.data.params["train.image_size"] == "64"  # from params.yaml
    assert "val_micro_f2" in train_run.data.metrics
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(train_run.info.run_id, "plots")}
    assert "plots/train_curve.png" in artifacts

    # An "interrupted" 1-epoch run continues to epoch 2 instead of starting over.
    assert main(["train", "--max-steps", "2", "--epochs", "2", "--resume"]) == 0
    with (workdir / "reports/train_history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]


def test_resume_without_checkpoint_is_a_clear_error(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume"]) == 2
    assert "--resume given but" in capsys.readouterr().err
