"""A real Airflow run of hemo_retraining (`airflow dags test`, local runner) on tiny data with a
real MLflow server and a real S3-protocol DVC remote:

* with the default `sync_data: true` the data (deleted from the project) is pulled from the remote
  (`dvc pull data.dvc` only), the champion is promoted and scored, outputs land in the run's own
  folder, every MLflow run carries the DAG run id, the real data md5 and git commit, the gate's
  decision reaches the branch by XCom and the parent run ends FINISHED;
* a remote that lacks the data fails sync_data at once with one clear line (no retry loop) and the
  parent run ends FAILED;
* a run on invalid data fails at validate and trains nothing.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
import mlflow
import pytest
import yaml

from hemo_pipeline.orchestration.runners import safe_run_key
from tests.conftest import S3_CREDENTIALS, TINY_PARAMS, running_mlflow_server, version_data_on_s3

REPO = Path(__file__).resolve().parents[2]
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
DVC = str(Path(sys.executable).with_name("dvc"))


def _sh(cwd: Path, *args: str, env: dict | None = None) -> str:
    result = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env or os.environ.copy(),
                            timeout=300)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory: pytest.TempPathFactory, pipeline_data: Path, s3_server: str):
    root = tmp_path_factory.mktemp("airflow")
    dags = root / "dags"
    dags.mkdir()
    shutil.copy(REPO / "dags" / "hemo_retraining.py", dags)
    project = root / "project"
    project.mkdir()
    shutil.copytree(pipeline_data, project / "data")
    (project / "params.yaml").write_text(TINY_PARAMS)
    # The project as a user has it: git + DVC, data versioned and pushed to an S3 remote, then absent.
    s3_env = {**os.environ, **S3_CREDENTIALS}
    bucket = f"hemo-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server, **_boto(S3_CREDENTIALS)).create_bucket(Bucket=bucket)
    version_data_on_s3(project, s3_server, bucket, **S3_CREDENTIALS)
    _sh(project, "git", "add", "-A")
    _sh(project, "git", "-c", "user.email=ci@hemo", "-c", "user.name=ci", "commit", "-qm", "data and params")
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache")
    with running_mlflow_server(tmp_path_factory.mktemp("airflow-mlflow")) as url:
        env = {
            **s3_env,
            "AIRFLOW_HOME": str(root / "home"),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "HEMO_PROJECT_DIR": str(project),
            "HEMO_RUNS_DIR": str(root / "runs"),
            "MLFLOW_TRACKING_URI": url,
            "OMP_NUM_THREADS": "1",
        }
        started = time.perf_counter()
        migrate = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True, timeout=600)
        assert migrate.returncode == 0, migrate.stderr[-3000:]
        print(f"airflow db migrate: {time.perf_counter() - started:.1f} s")
        yield {"env": env, "project": project, "runs": root / "runs", "mlflow": url, "s3": s3_server}


def _boto(credentials: dict) -> dict:
    return {"aws_access_key_id": credentials["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": credentials["AWS_SECRET_ACCESS_KEY"], "region_name": "us-east-1"}


def dags_test(env: dict, conf: dict) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    result = subprocess.run([AIRFLOW, "dags", "test", "hemo_retraining", "-c", json.dumps(conf)],
                            env=env, capture_output=True, text=True, timeout=600)
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


def latest_run(env: dict) -> dict:
    """The newest DAG run as `airflow dags list-runs` shows it (run_id, state, ...)."""
    out = subprocess.run([AIRFLOW, "dags", "list-runs", "hemo_retraining", "-o", "json"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = cli_json(out.stdout)
    return max(runs, key=lambda r: r.get("start_date") or "")


def latest_run_id(env: dict) -> str:
    return str(latest_run(env)["run_id"])


def dag_runs_of(airflow_env: dict, run_id: str) -> list:
    mlflow.set_tracking_uri(airflow_env["mlflow"])
    return mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list",
                              filter_string=f"tags.`airflow.dag_run_id` = '{run_id}'")


@pytest.mark.slow
def test_dag_run_pulls_trains_promotes_and_scores(airflow_env: dict) -> None:
    env, project = airflow_env["env"], airflow_env["project"]
    result, seconds = dags_test(env, {"runner": "local", "score_shards": 2})  # sync_data defaults to true
    print(f"airflow dags test hemo_retraining: {seconds:.1f} s")
    run_id = latest_run_id(env)
    states = task_states(env, run_id)
    assert states == {
        "start_run": "success", "sync_data": "success", "validate": "success", "train": "success",
        "refine": "success", "evaluate": "success", "gate": "success", "promoted": "success",
        "score": "success", "score_shard": "success", "merge_scores": "success", "report": "skipped", "not_promoted": "skipped",
        "end_run": "success",
    }, result.stdout[-4000:] + result.stderr[-4000:]
    assert (project / "data" / "train.csv").is_file()  # pulled from the remote by sync_data
    assert not (project / "outputs").exists(), "dvc pull data.dvc must not check out the pipeline's outputs"

    run_dirs = list(airflow_env["runs"].iterdir())
    assert len(run_dirs) == 1
    run_dir = run_dirs[0]
    assert run_dir.name == safe_run_key(run_id)  # the one run-id -> folder mapping (tests/security/test_run_folders.py)
    with (run_dir / "outputs" / "predictions.csv").open() as handle:  # merged from 2 mapped shards
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(1 for _ in (project / "data" / "test").rglob("*.jpg"))
    assert len(list((run_dir / "outputs").glob("predictions.shard-*-of-2.csv"))) == 2
    assert json.loads((run_dir / "reports" / "gate.json").read_text())["promoted"] is True
    assert not (project / "reports").exists(), "steps must write into the run folder only"

    client = mlflow.MlflowClient(airflow_env["mlflow"])
    assert client.get_model_version_by_alias("hemorrhage-classifier", "champion").version == "1"
    runs = dag_runs_of(airflow_env, run_id)
    steps = {r.data.tags.get("hemo.step") for r in runs}
    assert {"pipeline", "validate", "train", "refine", "evaluate", "gate", "score"} <= steps
    parent = next(r for r in runs if r.data.tags["hemo.step"] == "pipeline")
    assert all(r.data.tags.get("mlflow.parentRunId") == parent.info.run_id for r in runs if r is not parent)
    assert client.get_run(parent.info.run_id).info.status == "FINISHED"  # end_run closed it
    # Lineage from the project, not from the run folder the steps worked in:
    md5 = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    commit = _sh(project, "git", "rev-parse", "HEAD").strip()
    assert {r.data.tags["hemo.data_md5"] for r in runs} == {md5}
    assert {r.data.tags["mlflow.source.git.commit"] for r in runs} == {commit}


@pytest.mark.slow
def test_remote_without_the_data_fails_once_with_one_clear_line(airflow_env: dict) -> None:
    env, project = airflow_env["env"], airflow_env["project"]
    empty = f"hemo-empty-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=airflow_env["s3"], **_boto(S3_CREDENTIALS)).create_bucket(Bucket=empty)
    _sh(project, DVC, "remote", "add", "empty", f"s3://{empty}/hemo")
    _sh(project, DVC, "remote", "modify", "empty", "endpointurl", airflow_env["s3"])
    _sh(project, DVC, "remote", "default", "empty")
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache", ignore_errors=True)
    try:
        started = time.perf_counter()
        result, _ = dags_test(env, {"runner": "local"})
        seconds = time.perf_counter() - started
    finally:
        _sh(project, DVC, "remote", "default", "storage")
        _sh(project, DVC, "pull", "-q", "data.dvc", env=env)
    run_id = latest_run_id(env)
    states = task_states(env, run_id)
    assert states["sync_data"] == "failed" and states["validate"] == "upstream_failed"
    assert latest_run(env)["state"] == "failed", "a run whose step failed must not read as a success"
    log = result.stdout + result.stderr
    assert "dvc pull data.dvc from remote 'empty' failed" in log and "dvc push data.dvc" in log
    assert "UP_FOR_RETRY" not in log.upper(), "a configuration error must fail, not retry"
    assert seconds < 110, f"no retry with back-off (the first retry would wait 2 min): {seconds:.0f} s"
    parent = next(r for r in dag_runs_of(airflow_env, run_id) if r.data.tags["hemo.step"] == "pipeline")
    assert mlflow.MlflowClient(airflow_env["mlflow"]).get_run(parent.info.run_id).info.status == "FAILED"


@pytest.mark.slow
def test_invalid_data_fails_at_validate_and_trains_nothing(airflow_env: dict) -> None:
    env = airflow_env["env"]
    labels = airflow_env["project"] / "data" / "train.csv"
    original = labels.read_text()
    lines = original.splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",7"  # an edh label of 7
    labels.write_text("\n".join(lines) + "\n")
    client = mlflow.MlflowClient(airflow_env["mlflow"])
    champion_before = client.get_model_version_by_alias("hemorrhage-classifier", "champion").version
    try:
        result, _ = dags_test(env, {"runner": "local", "sync_data": False})
    finally:
        labels.write_text(original)
    run_id = latest_run_id(env)
    states = task_states(env, run_id)
    assert states["validate"] == "failed"
    assert latest_run(env)["state"] == "failed", "a run whose step failed must not read as a success"
    assert states["end_run"] == "failed"  # it ended the parent run FAILED, then failed the DAG run
    assert all(states[t] == "upstream_failed" for t in ("train", "refine", "evaluate", "gate")), states
    assert "FAIL labels.edh.binary" in result.stdout + result.stderr  # the report is in the task log
    assert "train" not in {r.data.tags.get("hemo.step") for r in dag_runs_of(airflow_env, run_id)}
    assert client.get_model_version_by_alias("hemorrhage-classifier", "champion").version == champion_before
