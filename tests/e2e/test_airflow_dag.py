"""A real Airflow run of hemo_retraining (`airflow dags test`, local runner) on tiny data with
a real MLflow server: the champion is promoted, outputs land in the run's own folder, MLflow runs
carry the DAG run id; a run on invalid data fails at validate and trains nothing."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest

from tests.conftest import TINY_PARAMS, running_mlflow_server

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory, pipeline_data: Path):
    root = tmp_path_factory.mktemp("airflow")
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(REPO / "dags" / "hemo_retraining.py", dags)
    project = root / "project"
    project.mkdir()
    shutil.copytree(pipeline_data, project / "data")
    (project / "params.yaml").write_text(TINY_PARAMS)
    with running_mlflow_server(tmp_path_factory.mktemp("airflow-mlflow")) as url:
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(root / "home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "HEMO_PROJECT_DIR": str(project),
            "HEMO_RUNS_DIR": str(root / "runs"),
            "MLFLOW_TRACKING_URI": url,
        }
        started = time.perf_counter()
        migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        print(f"airflow db migrate: {time.perf_counter() - started:.1f} s")
        yield {"env": env, "project": project, "runs": root / "runs", "mlflow": url}


def dags_test(env: dict, conf: dict) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    result = subprocess.run([AIRFLOW, "dags", "test", "hemo_retraining", "-c", json.dumps(conf)],
                            env=env, capture_output=True, text=True, timeout=1200)
    return result, time.perf_counter() - started


def cli_json(stdout: str) -> list[dict]:
    """The JSON array an `airflow ... -o json` command prints; warnings may precede it."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("["))
    return json.loads("\n".join(lines[start:]))


def task_states(env: dict, run_id: str) -> dict[str, str]:
    out = subprocess.run([AIRFLOW, "tasks", "states-for-dag-run", "hemo_retraining", run_id, "-o", "json"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return {row["task_id"]: row["state"] for row in cli_json(out.stdout)}


def latest_run_id(env: dict) -> str:
    out = subprocess.run([AIRFLOW, "dags", "list-runs", "hemo_retraining", "-o", "json"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = cli_json(out.stdout)
    return max(runs, key=lambda r: r.get("start_date") or "")["run_id"]


@pytest.mark.slow
def test_dag_run_trains_promotes_and_scores(airflow_env: dict) -> None:
    env = airflow_env["env"]
    result, seconds = dags_test(env, {"runner": "local", "sync_data": False})
    print(f"airflow dags test hemo_retraining: {seconds:.1f} s")
    run_id = latest_run_id(env)
    states = task_states(env, run_id)
    assert states == {
        "start_run": "success", "sync_data": "skipped", "validate": "success", "train": "success",
        "refine": "success", "evaluate": "success", "gate": "success", "promoted": "success",
        "score": "success", "not_promoted": "skipped",
    }, result.stdout[-4000:]

    run_dirs = list(airflow_env["runs"].iterdir())
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    with (run_dir / "outputs" / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(1 for _ in (airflow_env["project"] / "data" / "test").rglob("*.jpg"))
    assert json.loads((run_dir / "reports" / "gate.json").read_text())["promoted"] is True
    assert not (airflow_env["project"] / "outputs").exists(), "steps must write into the run folder only"

    mlflow.set_tracking_uri(airflow_env["mlflow"])
    client = mlflow.MlflowClient()
    assert client.get_model_version_by_alias("hemorrhage-classifier", "champion").version == "1"
    runs = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list",
                              filter_string=f"tags.`airflow.dag_run_id` = '{run_id}'")
    steps = {r.data.tags.get("hemo.step") for r in runs}
    assert {"pipeline", "validate", "train", "refine", "evaluate", "gate", "score"} <= steps
    parent = next(r for r in runs if r.data.tags["hemo.step"] == "pipeline").info.run_id
    assert all(r.data.tags.get("mlflow.parentRunId") == parent for r in runs if r.info.run_id != parent)


@pytest.mark.slow
def test_invalid_data_fails_at_validate_and_trains_nothing(airflow_env: dict) -> None:
    env = airflow_env["env"]
    labels = airflow_env["project"] / "data" / "train.csv"
    original = labels.read_text()
    lines = original.splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",7"  # an edh label of 7
    labels.write_text("\n".join(lines) + "\n")
    mlflow.set_tracking_uri(airflow_env["mlflow"])
    champion_before = mlflow.MlflowClient().get_model_version_by_alias("hemorrhage-classifier", "champion").version
    try:
        result, _ = dags_test(env, {"runner": "local", "sync_data": False})
    finally:
        labels.write_text(original)
    run_id = latest_run_id(env)
    states = task_states(env, run_id)
    assert states["validate"] == "failed"
    assert all(states[t] == "upstream_failed" for t in ("train", "refine", "evaluate", "gate")), states
    assert "FAIL labels.edh.binary" in result.stdout + result.stderr  # the report is in the task log
    runs = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list",
                              filter_string=f"tags.`airflow.dag_run_id` = '{run_id}'")
    assert "train" not in {r.data.tags.get("hemo.step") for r in runs}
    assert mlflow.MlflowClient().get_model_version_by_alias("hemorrhage-classifier", "champion").version == champion_before
