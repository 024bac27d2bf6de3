"""hemo_retraining as production runs it: triggered through Airflow's REST API, scheduled by a real
scheduler (LocalExecutor, metadata in PostgreSQL), every step in a container of the image
`make image` built (the DAG's `docker` runner, DockerOperator), MLflow on PostgreSQL with basic
auth and artifacts in an S3-protocol store (tests/e2e/stack_services.py starts them all).

One DAG run, on tiny data, checks what users meet first:

* the whole pipeline runs in containers to a promoted champion and predictions: validate ->
  train -> refine -> evaluate -> gate -> score (mapped) -> merge, the parent run ended by end_run;
* the train container is killed mid-epoch (`docker kill`, SIGKILL): the task's retry, a new
  container with the same command, resumes at the epoch that was lost (its log shows epoch 2 only);
* the killed container's spec (`docker inspect`): all GPUs requested, 16 GB shm, the step uid,
  the secrets volume read-only and only its path as environment, no secret value anywhere;
* results travel through XCom (start_run's parent run id, the gate's decision), read back through
  the REST API;
* MLflow: the champion is the gate's version, read with the reader account, which gets 403 moving
  the alias; the model's files are in the S3 bucket;
* outputs in the run's own folder, owned by the step uid and readable by others (the README's
  permission contract).

The test prints each task's duration as the REST API reports it (the README's table).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import S3_CREDENTIALS, TINY_PARAMS
from tests.e2e import stack_services as svc

DAG = "hemo_retraining"
EPOCHS = 2
RUN_TIMEOUT_S = 1800
"""The DAG run: ~10 min of steps on 2 busy cores plus the train task's retry delay (2-4 min, the
DAG's back-off: retry_delay 2 min, exponential)."""


@dataclass
class Stack:
    airflow: svc.Airflow
    mlflow: svc.Mlflow
    project: Path
    runs: Path
    bucket: str
    s3: str


@pytest.fixture(scope="module")
def stack(pipeline_data: Path, s3_server: str):
    reason = svc.stack_skip_reason()
    if reason:
        pytest.skip(reason)
    import shutil

    import boto3

    root = svc.shared_folder("hemo-stack-")
    try:
        bucket = f"hemo-mlflow-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1",
                     aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                     aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)
        project = root / "project"
        shutil.copytree(pipeline_data, project / "data")
        (project / "params.yaml").write_text(TINY_PARAMS)
        for path in [project, *project.rglob("*")]:  # the step uid reads the project (mounted read-only)
            path.chmod(0o755 if path.is_dir() else 0o644)
        runs = root / "runs"
        runs.mkdir()
        with svc.postgres_server(root) as postgres, svc.processes() as started:
            mlflow = svc.start_mlflow(started, root, postgres, s3_server, bucket)
            with svc.step_secrets_volume(mlflow.login("writer")) as volume:
                # the scheduler's own `hemo` (end_run) signs in from a private file, as compose's does
                scheduler_secrets = root / "scheduler-secrets.env"
                user, pw = mlflow.login("writer")
                scheduler_secrets.write_text(f"MLFLOW_TRACKING_USERNAME={user}\nMLFLOW_TRACKING_PASSWORD={pw}\n")
                scheduler_secrets.chmod(0o600)
                dag_env = {
                    "HEMO_PROJECT_DIR": str(project),
                    "HEMO_RUNS_DIR": str(runs),
                    "MLFLOW_TRACKING_URI": mlflow.url,
                    "AIRFLOW_VAR_HEMO_IMAGE": svc.IMAGE,
                    "HEMO_STEP_SECRETS": volume,
                    "HEMO_SECRETS_FILE": str(scheduler_secrets),
                    "HEMO_CONTAINER_UID": str(svc.STEP_UID),
                    "HEMO_CONTAINER_GID": str(svc.STEP_GID),
                    # step containers reach MLflow on this host's loopback (compose: the hemo_default network)
                    "HEMO_DOCKER_NETWORK": "host",
                    # torchrun's `--nproc_per_node gpu` needs a GPU to count: one process on this CPU host
                    "HEMO_DOCKER_PROCESSES": "1",
                    # the killed train task's retry starts at once, not after the production 2 minutes
                    "HEMO_RETRY_DELAY_S": "5",
                    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                }
                with svc.airflow_services(root, postgres, dag_env) as airflow:
                    airflow.wait_for_dag(DAG)
                    airflow.api("PATCH", f"/dags/{DAG}", {"is_paused": False})
                    yield Stack(airflow=airflow, mlflow=mlflow, project=project, runs=runs, bucket=bucket, s3=s3_server)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _exit_code_from_events(container_id: str, since: int) -> int:
    """The exit code the engine reported when ``container_id`` died: its `die` event outlives the
    container, which DockerOperator (auto_remove="success") removes as soon as it has exited."""
    events = subprocess.run(
        ["docker", "events", "--since", str(since), "--until", str(int(time.time()) + 1),
         "--filter", f"container={container_id}", "--filter", "event=die", "--format", "{{json .}}"],
        capture_output=True, text=True, timeout=60)
    assert events.returncode == 0, events.stderr
    (died,) = [json.loads(line) for line in events.stdout.splitlines() if line.strip()]
    return int(died["Actor"]["Attributes"]["exitCode"])


def _kill_train_mid_epoch(timeout: float) -> tuple[dict, float]:
    """Wait for the train step's container, follow its log to the end of epoch 1 (the checkpoint
    is written before that line), then SIGKILL it: the kill lands in epoch 2. Returns the killed
    container's `docker inspect` (taken while it ran: the operator removes it once it has exited)
    with ``State.ExitCode`` as the engine reported it, and the seconds it had run."""
    from tests.conftest import read_until

    deadline = time.monotonic() + timeout
    train = None
    while train is None and time.monotonic() < deadline:
        running = svc.containers(f"ancestor={svc.IMAGE}", "status=running", all_states=False)
        train = next((c for c in running if "train" in svc.command_of(c)), None)
        if train is None:
            time.sleep(0.5)
    assert train is not None, f"no train container started within {timeout:.0f} s"
    since = int(time.time()) - 1
    follow = subprocess.Popen(["docker", "logs", "-f", train["Id"]], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        read_until(follow, "epoch 1: loss", max(deadline - time.monotonic(), 60))
        kill = subprocess.run(["docker", "kill", train["Id"]], capture_output=True, text=True, timeout=60)
        assert kill.returncode == 0, kill.stderr
    finally:
        follow.kill()
        follow.wait(timeout=30)
    killed = dict(train)
    killed["State"] = {"Running": False, "ExitCode": _exit_code_from_events(train["Id"], since)}
    return killed, time.monotonic() - (deadline - timeout)


def _durations(task_instances: list[dict]) -> str:
    rows = []
    for ti in sorted(task_instances, key=lambda t: (t.get("start_date") or "", t["task_id"], t.get("map_index", -1))):
        name = ti["task_id"] + (f"[{ti['map_index']}]" if ti.get("map_index", -1) >= 0 else "")
        duration = ti.get("duration")
        rows.append(f"{name:<16} {ti['state']:<8} try {ti.get('try_number')}  "
                    + (f"{duration:7.1f} s" if duration is not None else "      -"))
    return "\n".join(rows)


@contextlib.contextmanager
def _signed_in(user: str, password: str):
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow
@pytest.mark.timeout(2700)
def test_the_dag_runs_in_containers_under_the_scheduler_to_a_champion(stack: Stack) -> None:
    airflow = stack.airflow
    started = time.perf_counter()
    run_id = airflow.trigger(DAG, {"runner": "docker", "sync_data": False, "epochs": EPOCHS})
    killed, ran = _kill_train_mid_epoch(timeout=900)
    print(f"train container killed {ran:.0f} s after the trigger, in epoch 2")
    state = airflow.wait_for_run(DAG, run_id, timeout=RUN_TIMEOUT_S)
    seconds = time.perf_counter() - started
    tis = airflow.task_instances(DAG, run_id)
    print(f"DAG run {run_id}: {state} in {seconds:.0f} s (trigger to end, REST API)\n{_durations(tis)}")
    states = {(t["task_id"], t.get("map_index", -1)): t["state"] for t in tis}
    if state != "success":
        failed = [t for t in tis if t["state"] in ("failed", "upstream_failed", "up_for_retry")]
        logs = "\n".join(airflow.task_log(DAG, run_id, t["task_id"], max(t.get("try_number") or 1, 1))[-3000:]
                         for t in failed[:2])
        pytest.fail(f"DAG run ended {state}: {states}\n{logs}\n"
                    + "\n".join(p.tail(1500) for p in airflow.processes))
    assert {task: s for (task, _), s in states.items()} == {
        "start_run": "success", "sync_data": "skipped", "validate": "success", "train": "success",
        "refine": "success", "evaluate": "success", "gate": "success", "promoted": "success", "score": "success",
        "score_shard": "success", "merge_scores": "success", "report": "skipped", "not_promoted": "skipped", "end_run": "success"}

    # --- the kill and the resume: the retry is a new container that continues at epoch 2 ---------------
    train = next(t for t in tis if t["task_id"] == "train")
    assert train["try_number"] == 2, "the killed train task must have been retried once"
    first = airflow.task_log(DAG, run_id, "train", 1)
    second = airflow.task_log(DAG, run_id, "train", 2)
    assert re.findall(r"epoch (\d+): loss", first) == ["1"], first[-3000:]
    assert re.findall(r"epoch (\d+): loss", second) == ["2"], second[-3000:]  # resumed, not restarted
    assert killed["State"]["ExitCode"] == 137 and not killed["State"]["Running"]

    # --- the container spec of a GPU step: as on a GPU host, and no secret in it -------------------------
    host = killed["HostConfig"]
    (gpus,) = host["DeviceRequests"]
    assert gpus["Count"] == -1 and gpus["Capabilities"] == [["gpu"]]
    assert host["ShmSize"] == 16 * 1024**3
    assert killed["Config"]["User"] == f"{svc.STEP_UID}:{svc.STEP_GID}"
    env = dict(item.split("=", 1) for item in killed["Config"]["Env"])
    assert env["HEMO_SECRETS_FILE"] == "/run/hemo-secrets/hemo-step.env" and env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"
    secret_mount = next(m for m in killed["Mounts"] if m["Destination"] == "/run/hemo-secrets")
    assert secret_mount["Type"] == "volume" and secret_mount["RW"] is False
    spec = json.dumps(killed)
    assert not any(value in spec for key, value in stack.mlflow.accounts.items() if key.endswith("PASSWORD"))
    subprocess.run(["docker", "rm", killed["Id"]], capture_output=True, timeout=60)

    # --- results through XCom, as the REST API returns them ------------------------------------------------
    parent = airflow.xcom(DAG, run_id, "start_run")
    gate = airflow.xcom(DAG, run_id, "gate")
    assert re.fullmatch(r"[0-9a-f]{32}", parent["run_id"])
    assert gate["promoted"] is True and gate["champion_version_after"]

    # --- MLflow: the champion, read with the reader account, which cannot move it ------------------------
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with _signed_in(*stack.mlflow.login("reader")):
        client = MlflowClient(stack.mlflow.url)
        champion = client.get_model_version_by_alias("hemorrhage-classifier", "champion")
        assert champion.version == str(gate["champion_version_after"])
        assert client.get_run(parent["run_id"]).info.status == "FINISHED"  # end_run closed the parent
        with pytest.raises(MlflowException, match="403"):
            client.set_registered_model_alias("hemorrhage-classifier", "champion", champion.version)
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.s3, region_name="us-east-1",
                      aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
                      aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=stack.bucket, Prefix="artifacts/").get("Contents", [])]
    assert any(k.endswith("model.safetensors") for k in keys) and any(k.endswith("spec.json") for k in keys)

    # --- outputs: the run's own folder, written by the step uid, readable by others -----------------------
    (run_dir,) = [p for p in stack.runs.iterdir() if p.is_dir()]
    predictions = run_dir / "outputs" / "predictions.csv"
    with predictions.open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(1 for _ in (stack.project / "data" / "test").rglob("*.jpg"))
    assert json.loads((run_dir / "reports" / "gate.json").read_text())["promoted"] is True
    written = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {p.stat().st_uid for p in written} == {svc.STEP_UID}
    assert [str(p) for p in written if not p.stat().st_mode & 0o004] == [], "outputs others cannot read"
    assert not (stack.project / "outputs").exists(), "steps write into their run folder only"
