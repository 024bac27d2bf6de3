"""Runners: the same `hemo` command as a local process, a DockerOperator and a
KubernetesPodOperator, with GPUs requested only for the steps that use them."""

from __future__ import annotations

from pathlib import Path

import pytest

from hemo_pipeline.orchestration.runners import (
    CONTAINER_PROJECT,
    GPU_STEPS,
    ReportNotConfigured,
    StepFailed,
    StepSettings,
    docker_operator,
    hemo_args,
    kubernetes_operator,
    report_args,
    run_local,
    safe_run_key,
    shard_args,
)

STEPS = ("validate", "train", "refine", "evaluate", "gate", "score")


@pytest.fixture
def settings(tmp_path: Path) -> StepSettings:
    return StepSettings(
        project_dir=tmp_path / "project", run_dir=tmp_path / "runs" / "manual__2026-01-01T00_00_00_00_00",
        mlflow_uri="http://mlflow:5000", dag_run_id="manual__2026-01-01T00:00:00+00:00", parent_run_id="abc123",
        overrides={"epochs": 3, "image_size": None, "min_improvement": 0.01}, image="registry/hemo:1",
        uid=1000, gid=1000,
    )


def test_run_key_is_a_readable_safe_folder_name() -> None:
    """Airflow's ids keep a readable prefix and get the hash of the raw id; plain ids (Kubeflow's
    run UUIDs, kfp.local's numbers) stay as they are. The attacks: tests/security/test_run_folders.py."""
    key = safe_run_key("scheduled__2026-01-05T03:00:00+00:00")
    assert key.startswith("scheduled__2026-01-05T03_00_00_00_00.") and len(key.rsplit(".", 1)[1]) == 16
    assert safe_run_key("scheduled__2026-01-05T03:00:00+00:00") == key  # the same id, the same folder (retries)
    assert safe_run_key("0b7c-run") == "0b7c-run"


def test_args_carry_overrides_as_settings_and_use_run_relative_outputs(tmp_path: Path) -> None:
    train = hemo_args("train", tmp_path, {"epochs": 3, "image_size": None, "refine.lr": "2e-6"})
    assert train[-4:] == ["--set", "train.epochs=3", "--set", "refine.lr=2e-6"]
    assert "--resume" in train and train[train.index("--resume") + 1] == "auto"  # retries continue
    assert not any("image_size" in a for a in train)
    assert hemo_args("gate", tmp_path, {"min_improvement": 0.01})[-2:] == ["--set", "gate.min_improvement=0.01"]
    assert hemo_args("score", tmp_path, {})[:3] == ["score", "--data", str(tmp_path / "data" / "test")]
    with pytest.raises(ValueError):
        hemo_args("deploy", tmp_path, {})
    with pytest.raises(ValueError):
        hemo_args("train", tmp_path, {"epochz": 3})


def test_report_args_come_from_the_sites_configuration() -> None:
    """A DICOMweb source is retrieved, a folder read; each run writes into its own subfolder; the
    push and plain http only when configured; nothing configured skips, a partial setup fails."""
    base = {"mapping": "/srv/private/test_mapping.csv", "source": "/srv/dicom", "out": "/srv/private/results"}
    assert report_args(base, "run-1") == ["--mapping", "/srv/private/test_mapping.csv", "--dicom", "/srv/dicom",
                                          "--out", "/srv/private/results/run-1"]
    web = report_args({**base, "source": "HTTPS://pacs.example/dicom-web", "push": "https://pacs.example/dicom-web",
                       "allow_http": "False"}, "run-2")
    assert web[2:4] == ["--dicomweb", "HTTPS://pacs.example/dicom-web"] and "--dicom" not in web
    assert web[-2:] == ["--push", "https://pacs.example/dicom-web"] and "--allow-http" not in web
    assert report_args({**base, "allow_http": "true"}, "r")[-1] == "--allow-http"
    assert hemo_args("report", Path("/p"), {})[:3] == ["report", "--exams", "outputs/exams.csv"]
    with pytest.raises(ReportNotConfigured):
        report_args({"mapping": None, "source": " ", "out": None}, "r")
    with pytest.raises(ValueError, match="set hemo_report_source, hemo_report_out as well"):
        report_args({"mapping": "/m.csv"}, "r")
    with pytest.raises(ValueError, match="hemo_report_allow_http is 'yes'"):
        report_args({**base, "allow_http": "yes"}, "r")
    with pytest.raises(ValueError, match="set hemo_report_mapping, hemo_report_source, hemo_report_out as well"):
        report_args({"allow_http": "false"}, "r")  # an optional one alone is a setup left half done
    for name in ("source", "push"):  # the task log prints the command line: no password may be in it
        with pytest.raises(ValueError, match=f"hemo_report_{name} carries credentials") as caught:
            report_args({**base, name: "https://radiology:s3cret@pacs.example/dicom-web"}, "r")
        assert "s3cret" not in str(caught.value)
    for name in ("mapping", "out", "source"):  # steps run in the run folder
        with pytest.raises(ValueError, match=f"hemo_report_{name} must be an absolute path"):
            report_args({**base, name: "private/x"}, "r")


@pytest.mark.parametrize("step", STEPS)
def test_docker_operator(settings: StepSettings, step: str) -> None:
    op = docker_operator(f"{step}_docker", step, settings)
    assert op.image == "registry/hemo:1"
    assert op.command == hemo_args(step, Path(CONTAINER_PROJECT), settings.overrides)
    assert op.environment["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert op.environment["HEMO_PARENT_RUN_ID"] == "abc123"
    assert op.environment["HEMO_DAG_RUN_ID"] == settings.dag_run_id
    assert op.environment["HEMO_PROJECT_DIR"] == CONTAINER_PROJECT  # lineage from the mounted project
    assert op.environment["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"  # torch.load refuses pickled code
    assert op.environment["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert op.working_dir.endswith(settings.run_dir.name)
    assert op.user == "1000:1000"
    # the step's result comes back as JSON retrieved from the container, never from a shared disk
    assert op.retrieve_output and op.retrieve_output_path == op.environment["HEMO_RESULT_FILE"]
    assert op.pickling_library.__name__ == "json"
    targets = {m["Target"]: m for m in op.mounts}
    assert targets[CONTAINER_PROJECT]["ReadOnly"] is True
    if step in GPU_STEPS:
        (request,) = op.device_requests
        assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
        assert op.shm_size >= 8 * 1024**3
    else:
        assert not op.device_requests
    if step in ("train", "refine"):  # one DDP process per GPU the container sees, then the same arguments
        assert op.entrypoint == ["hemo-torchrun", "--standalone", "--nproc_per_node", "gpu", "--max-restarts", "0",
                                 "--no-python", "hemo"]
    else:
        assert op.entrypoint is None  # the image's own `hemo` entrypoint


@pytest.mark.parametrize("step", STEPS)
def test_kubernetes_operator(settings: StepSettings, step: str) -> None:
    op = kubernetes_operator(f"{step}_pod", step, settings)
    assert op.image == "registry/hemo:1"
    limits = op.container_resources.limits
    assert ("nvidia.com/gpu" in limits) == (step in GPU_STEPS)
    if step in GPU_STEPS:
        assert limits["nvidia.com/gpu"] == "1"
    command = op.arguments[0]
    assert f"exec hemo {step}" in command and f"cd /opt/hemo-runs/{settings.run_dir.name}" in command
    raw = op.env_vars  # a dict until the operator converts it at execute time
    env = dict(raw) if isinstance(raw, dict) else {e.name: e.value for e in raw}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["HEMO_PARENT_RUN_ID"] == "abc123"
    assert env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"
    assert any(m.mount_path == "/dev/shm" for m in op.volume_mounts)
    assert op.do_xcom_push and env["HEMO_RESULT_FILE"] == "/airflow/xcom/return.json"
    context = op.security_context
    assert (context.run_as_user, context.run_as_group, context.fs_group) == (1000, 1000, 1000)


def test_docker_steps_mount_the_secrets_volume_and_get_only_its_path(settings: StepSettings) -> None:
    settings.step_secrets = "hemo-step-secrets"
    op = docker_operator("train_docker", "train", settings)
    targets = {m["Target"]: m for m in op.mounts}
    secrets = targets["/run/hemo-secrets"]
    assert (secrets["Type"], secrets["Source"], secrets["ReadOnly"]) == ("volume", "hemo-step-secrets", True)
    assert op.environment["HEMO_SECRETS_FILE"] == "/run/hemo-secrets/hemo-step.env"
    settings.step_secrets = None
    op = docker_operator("train_docker", "train", settings)
    assert "HEMO_SECRETS_FILE" not in op.environment and "/run/hemo-secrets" not in {m["Target"] for m in op.mounts}


def test_pods_take_the_credentials_from_a_kubernetes_secret(settings: StepSettings) -> None:
    settings.step_secrets = "hemo-step"
    op = kubernetes_operator("gate_pod", "gate", settings)
    (source,) = op.env_from
    assert source.secret_ref.name == "hemo-step"
    raw = op.env_vars
    env = dict(raw) if isinstance(raw, dict) else {e.name: e.value for e in raw}
    assert not any("USERNAME" in name or "PASSWORD" in name for name in env)


def test_safety_settings_cannot_be_overridden_by_extra_env(settings: StepSettings) -> None:
    from hemo_pipeline.orchestration.runners import step_env

    settings.extra_env = {"TORCH_FORCE_WEIGHTS_ONLY_LOAD": "0", "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}
    env = step_env(settings)
    assert env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1" and env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"


def test_local_runner_streams_returns_the_result_and_classifies_failures(settings: StepSettings,
                                                                        tmp_path: Path) -> None:
    fake = tmp_path / "hemo"
    fake.write_text("#!/bin/sh\necho \"args: $*\"\necho \"parent: $HEMO_PARENT_RUN_ID\"\n"
                    "[ \"$1\" = gate ] && echo '{\"promoted\": true}' > \"$HEMO_RESULT_FILE\"\n"
                    "[ \"$1\" = validate ] && exit 1\n[ \"$1\" = train ] && exit 3\nexit 0\n")
    fake.chmod(0o755)
    assert run_local("gate", settings, hemo_bin=str(fake)) == {"promoted": True}
    assert run_local("refine", settings, hemo_bin=str(fake)) is None  # no result published
    assert settings.run_dir.is_dir()
    with pytest.raises(StepFailed) as validation:
        run_local("validate", settings, hemo_bin=str(fake))
    assert validation.value.user_error and "args: validate" in str(validation.value)
    with pytest.raises(StepFailed) as crash:
        run_local("train", settings, hemo_bin=str(fake))
    assert not crash.value.user_error  # unexpected failures are retried by Airflow


def test_shards_running_side_by_side_each_get_their_own_result(settings: StepSettings, tmp_path: Path) -> None:
    """Mapped score tasks of one DAG run share the run folder: each must read back its own result."""
    from concurrent.futures import ThreadPoolExecutor

    fake = tmp_path / "hemo"
    # shard 0 writes at once and exits after 1 s; shard 1 writes at 0.5 s: one shared file would
    # hand shard 0 the result of shard 1
    fake.write_text('#!/bin/sh\nshard=""; prev=""\nfor a in "$@"; do [ "$prev" = --shard ] && shard="$a"; prev="$a"; done\n'
                    '[ "$shard" = 1/2 ] && sleep 0.5\nprintf \'{"shard": "%s"}\' "$shard" > "$HEMO_RESULT_FILE"\n'
                    '[ "$shard" = 0/2 ] && sleep 1\nexit 0\n')
    fake.chmod(0o755)
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda i: run_local("score", settings, hemo_bin=str(fake),
                                                    extra_args=shard_args(i, 2, "models:/m/1")), range(2)))
    assert results == [{"shard": "0/2"}, {"shard": "1/2"}]
    assert sorted(p.name for p in (settings.run_dir / ".hemo-results").glob("score*.json")) == [
        "score.shard-0-of-2.json", "score.shard-1-of-2.json"]


def test_exit_codes_of_container_failures() -> None:
    from hemo_pipeline.orchestration.runners import exit_code_of

    assert exit_code_of(RuntimeError("Docker container failed: {'Error': None, 'StatusCode': 2}")) == 2
    assert exit_code_of(RuntimeError("Pod hemo-train returned a failure. ... 'exit_code': 3, 'reason': 'Error'")) == 3
    assert exit_code_of(RuntimeError("connection reset")) is None
