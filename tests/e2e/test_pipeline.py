"""The whole pipeline through the real `hemo` CLI against a real MLflow server.

First run: train -> refine -> evaluate -> gate -> score registers v1 and promotes it.
Second run: a deliberately worse challenger (its checkpoint biased to predict nothing) is
registered as v2 but NOT promoted; scoring still uses the champion v1.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import torch

from hemo_model.model.storage import load_checkpoint, save_checkpoint

HEMO = str(Path(sys.executable).with_name("hemo"))


def hemo(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([HEMO, *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, f"hemo {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.slow
def test_pipeline_promotes_first_model_and_rejects_a_worse_one(workdir: Path, mlflow_server: str) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server}
    hemo("validate", "--data", "data", env=env)
    hemo("train", env=env)
    hemo("refine", env=env)
    hemo("evaluate", env=env)
    gate = hemo("gate", env=env)
    assert "PROMOTED" in gate.stdout
    hemo("score", env=env)

    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("hemorrhage-classifier", "champion").version == "1"
    version = client.get_model_version("hemorrhage-classifier", "1")
    run = client.get_run(version.run_id)
    assert run.data.tags["hemo.step"] == "evaluate" and "mlflow.parentRunId" in run.data.tags
    assert run.data.tags["hemo.params_hash"] and "micro_f2_context" in run.data.metrics
    assert run.data.metrics["rsna_log_loss_context"] > 0 and "rsna_log_loss_single" in run.data.metrics
    # Provenance: the split and the training patients (the train role of the split report) travel with the version.
    roles = json.loads((workdir / "reports/split.json").read_text())["roles"]
    train_ids = sorted(k for k, v in roles.items() if v == "train")
    assert version.tags["hemo.split.salt"] == "tiny-1" and version.tags["hemo.train_patients.count"] == "2"
    recorded = json.loads(mlflow.artifacts.load_text(f"runs:/{version.run_id}/provenance/train_patients.json"))
    assert recorded["train_patients"] == train_ids
    gate_json = json.loads((workdir / "reports/gate.json").read_text())
    assert gate_json["gate_patients"] == 2 and gate_json["challenger_version"] == "1"

    # Every step of the pipeline run is a child of one parent run.
    parent = json.loads((workdir / "outputs/pipeline_run.json").read_text())["run_id"]
    children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert {c.data.tags["hemo.step"] for c in children} == {"train", "refine", "evaluate", "gate", "score"}

    # Predictions cover every test slice, in both formats.
    test_slices = sorted(p.name for p in (workdir / "data/test").rglob("*.jpg"))
    with (workdir / "outputs/predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["ID"] for r in rows) == test_slices
    assert all(r[c] in {"0", "1"} for r in rows for c in ("ich", "ivh", "sah", "sdh", "edh"))
    with (workdir / "outputs/predictions_leaderboard.csv").open() as handle:
        long_rows = list(csv.DictReader(handle))
    assert len(long_rows) == 5 * len(test_slices)
    assert {r["ID"] for r in long_rows} == {f"{n[:-4]}_{c}" for n in test_slices for c in ("ich", "ivh", "sah", "sdh", "edh")}
    first_predictions = (workdir / "outputs/predictions.csv").read_bytes()

    # Second run: a worse challenger. Bias the refined model towards "no bleed anywhere".
    model, config, payload = load_checkpoint(workdir / "outputs/refine/best.pt")
    with torch.no_grad():
        (model.backbone.fc if config.head == "linear" else model.head[4]).bias.fill_(-30.0)
    save_checkpoint(workdir / "worse.pt", model, config, provenance=payload["provenance"])
    hemo("evaluate", "--model", "worse.pt", env=env)
    gate = hemo("gate", env=env)
    assert "NOT promoted" in gate.stdout
    decision = json.loads((workdir / "reports/gate.json").read_text())
    assert decision["promoted"] is False and decision["challenger_version"] == "2"
    assert decision["challenger_micro_f2"] == 0.0 and decision["champion_version_after"] == "1"
    assert client.get_model_version_by_alias("hemorrhage-classifier", "champion").version == "1"
    assert client.get_model_version_by_alias("hemorrhage-classifier", "challenger").version == "2"
    assert client.get_model_version("hemorrhage-classifier", "2").tags["gate.decision"] == "rejected"

    score = hemo("score", env=env)
    assert "v1" in score.stdout
    assert (workdir / "outputs/predictions.csv").read_bytes() == first_predictions
