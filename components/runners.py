"""How an orchestrator runs one `hemo <step>`: in the project venv, in Docker, or on Kubernetes.

The Airflow DAG stays a thin caller: each task names a step and this module turns it into
(a) a local `hemo` subprocess, (b) a DockerOperator on the training image with all GPUs
requested, or (c) a KubernetesPodOperator with `nvidia.com/gpu` limits, GPUs only for the steps
that use them. Every variant runs the same command line with the same environment, so a step
behaves identically whichever runner executes it.

Only the standard library is imported at module level: the DAG file imports this at parse time.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNNERS = ("local", "docker", "kubernetes")
GPU_STEPS = frozenset({"train", "refine", "score"})
"""Steps that run a network over many slices; validate/gate/evaluate stay on the CPU."""

DEFAULT_IMAGE = "ghcr.io/hemo-pipeline/hemo:0.1.0"
CONTAINER_PROJECT = "/opt/hemo"  # where the project (data/, params.yaml) is mounted in containers
CONTAINER_RUNS = "/opt/hemo-runs"
USER_ERROR_CODES = frozenset({1, 2})
"""`hemo` exit codes for bad input (1: validation failed, 2: user error): retrying cannot help."""


def safe_run_key(run_id: str) -> str:
    """A DAG run id as a folder name: 'manual__2026-01-01T00:00:00+00:00' -> no ':' or '+'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", run_id)


@dataclass
class StepSettings:
    """Everything a step needs besides its name; paths are as seen by the runner."""

    project_dir: Path
    run_dir: Path
    mlflow_uri: str
    dag_run_id: str
    parent_run_id: str | None = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    image: str = DEFAULT_IMAGE
    extra_env: Mapping[str, str] = field(default_factory=dict)


def hemo_args(step: str, project: Path, overrides: Mapping[str, Any]) -> list[str]:
    """The `hemo` argument list of a step. Outputs use the step's defaults (outputs/, reports/)
    relative to the working folder, which is the run's own folder: runs never share outputs."""
    data = str(project / "data")
    params = ["--params", str(project / "params.yaml")]
    if step == "start-run":
        return ["start-run", *params]
    if step == "validate":
        return ["validate", "--data", data, "--reports", "reports/validation", *params]
    if step == "train":
        args = ["train", "--data", data, *params]
        for key, flag in (("epochs", "--epochs"), ("image_size", "--image-size")):
            if overrides.get(key) is not None:
                args += [flag, str(overrides[key])]
        return args
    if step == "refine":
        return ["refine", "--data", data, *params]
    if step == "evaluate":
        return ["evaluate", "--data", data, *params]
    if step == "gate":
        args = ["gate", "--data", data, *params]
        if overrides.get("min_improvement") is not None:
            args += ["--min-improvement", str(overrides["min_improvement"])]
        return args
    if step == "score":
        return ["score", "--data", str(project / "data" / "test"), "--out", "outputs/predictions.csv", *params]
    raise ValueError(f"unknown step {step!r}")


def step_env(settings: StepSettings) -> dict[str, str]:
    env = {"MLFLOW_TRACKING_URI": settings.mlflow_uri, "HEMO_DAG_RUN_ID": settings.dag_run_id,
           "PYTHONUNBUFFERED": "1", **settings.extra_env}
    if settings.parent_run_id:
        env["HEMO_PARENT_RUN_ID"] = settings.parent_run_id
    return env


class StepFailed(RuntimeError):
    def __init__(self, step: str, code: int, tail: str) -> None:
        super().__init__(f"hemo {step} exited with code {code}:\n{tail}")
        self.code = code
        self.user_error = code in USER_ERROR_CODES


def run_local(step: str, settings: StepSettings, hemo_bin: str | None = None) -> str:
    """Run `hemo <step>` in the project venv with the run folder as working folder; stream its
    output into the task log; return the last line (start-run prints the run id there)."""
    hemo = hemo_bin or os.environ.get("HEMO_BIN") or str(Path(sys.executable).with_name("hemo"))
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    argv = [hemo, *hemo_args(step, settings.project_dir, settings.overrides)]
    print("running:", " ".join(argv), f"(cwd {settings.run_dir})", flush=True)
    process = subprocess.Popen(argv, cwd=settings.run_dir, env={**os.environ, **step_env(settings)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    code = process.wait()
    if code != 0:
        raise StepFailed(step, code, "\n".join(lines[-20:]))
    return next((line for line in reversed(lines) if line.strip()), "")


def in_container(settings: StepSettings) -> StepSettings:
    """The same settings with paths as the container sees them (project and runs mounted)."""
    return dataclasses.replace(settings, project_dir=Path(CONTAINER_PROJECT),
                               run_dir=Path(CONTAINER_RUNS) / settings.run_dir.name)


def docker_operator(task_id: str, step: str, settings: StepSettings, docker_url: str | None = None) -> Any:
    """DockerOperator for a step: the training image, all GPUs for GPU steps, 16 GB shm (the
    DataLoader's workers share batches through /dev/shm), project and runs folders mounted."""
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest, Mount

    inner = in_container(settings)
    container_run_dir = str(inner.run_dir)
    gpu = step in GPU_STEPS
    return DockerOperator(
        task_id=task_id,
        image=settings.image,
        command=hemo_args(step, Path(CONTAINER_PROJECT), settings.overrides),
        working_dir=container_run_dir,
        environment=step_env(inner),
        mounts=[
            Mount(target=CONTAINER_PROJECT, source=str(settings.project_dir), type="bind", read_only=True),
            Mount(target=CONTAINER_RUNS, source=str(settings.run_dir.parent), type="bind"),
        ],
        device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpu else None,
        shm_size=16 * 1024**3 if gpu else None,
        docker_url=docker_url or os.environ.get("DOCKER_HOST", "unix://var/run/docker.sock"),
        network_mode=os.environ.get("HEMO_DOCKER_NETWORK", "bridge"),
        auto_remove="success",
        mount_tmp_dir=False,
        tty=False,
    )


def kubernetes_operator(task_id: str, step: str, settings: StepSettings, namespace: str | None = None,
                        pvc: str = "hemo-data") -> Any:
    """KubernetesPodOperator for a step: `nvidia.com/gpu: 1` limits for GPU steps only, the
    project and runs on a shared PVC, a memory-backed /dev/shm for the DataLoader."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    inner = in_container(settings)
    container_run_dir = str(inner.run_dir)
    gpu = step in GPU_STEPS
    limits = {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"} if gpu else {"cpu": "2", "memory": "8Gi"}
    requests = {"cpu": "4", "memory": "32Gi"} if gpu else {"cpu": "1", "memory": "4Gi"}
    volumes = [
        k8s.V1Volume(name="hemo", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=pvc)),
        k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit="16Gi")),
    ]
    mounts = [
        k8s.V1VolumeMount(name="hemo", mount_path=CONTAINER_PROJECT, sub_path="project"),
        k8s.V1VolumeMount(name="hemo", mount_path=CONTAINER_RUNS, sub_path="runs"),
        k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
    ]
    return KubernetesPodOperator(
        task_id=task_id,
        name=f"hemo-{step}",
        namespace=namespace or os.environ.get("HEMO_K8S_NAMESPACE", "hemo"),
        image=settings.image,
        # Pods have no working-dir setting: create the run folder and cd into it, then exec hemo.
        cmds=["sh", "-c"],
        arguments=[f"mkdir -p {shlex.quote(container_run_dir)} && cd {shlex.quote(container_run_dir)} && exec "
                   + shlex.join(["hemo", *hemo_args(step, Path(CONTAINER_PROJECT), settings.overrides)])],
        env_vars=step_env(inner),
        container_resources=k8s.V1ResourceRequirements(limits=limits, requests=requests),
        volumes=volumes,
        volume_mounts=mounts,
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if gpu else None,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
    )
