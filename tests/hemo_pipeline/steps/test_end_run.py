"""`hemo end-run`: ends the pipeline's parent run, by --status or by an orchestrator's final-status
document (Kubeflow's exit handler), against a real embedded MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from hemo_pipeline.cli import main
from hemo_pipeline.services import tracking


def _start(workdir: Path) -> str:
    assert main(["start-run"]) == 0
    return json.loads((workdir / tracking.PIPELINE_RUN_FILE).read_text())["run_id"]


def test_succeeded_final_status_ends_the_run_finished(workdir: Path) -> None:
    run_id = _start(workdir)
    assert main(["end-run", "--final-status", json.dumps({"state": "SUCCEEDED", "error": {}})]) == 0
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FINISHED" and "hemo.end_reason" not in run.data.tags


def test_failed_final_status_ends_the_run_failed_with_the_error(workdir: Path) -> None:
    run_id = _start(workdir)
    status = {"state": "FAILED", "pipelineTaskName": "exit-handler-1",
              "error": {"code": 1, "message": "Task validate failed."}}
    assert main(["end-run", "--run-id", run_id, "--final-status", json.dumps(status)]) == 0
    run = mlflow.MlflowClient().get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["hemo.end_reason"] == "pipeline failed (exit-handler-1): Task validate failed."


@pytest.mark.parametrize("document", ["not json", "[]", '{"error": {}}'])
def test_a_malformed_final_status_is_a_user_error_and_leaves_the_run_open(workdir: Path, document: str,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    run_id = _start(workdir)
    assert main(["end-run", "--final-status", document]) == 2
    assert "--final-status" in capsys.readouterr().err
    assert mlflow.MlflowClient().get_run(run_id).info.status == "RUNNING"
