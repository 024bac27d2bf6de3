"""`hemo train` across N pods x M GPUs: a Kubeflow PyTorchJob or a Trainer v2 TrainJob, and a waiter.

One pod with one GPU (the KubernetesPodOperator runner, the Kubeflow pipeline's train step) is the
default; when an epoch takes too long for one GPU, the same step runs as a distributed job:

* **PyTorchJob** (``kubeflow.org/v1``, Training Operator v1): a Master and N-1 Workers, each a
  container named ``pytorch`` (the operator looks for that name) with M GPUs, restartPolicy
  OnFailure; with ``min_workers`` an elastic job instead (N Workers, c10d rendezvous).
* **TrainJob** (``trainer.kubeflow.org/v1alpha1``, Trainer v2): N nodes x M processes on a
  ClusterTrainingRuntime (``torch-distributed``); the PVC, /dev/shm and GPU toleration go in a
  runtime patch on the runtime's ``node`` job, since a TrainJob's trainer has no volumes of its own.

Both run the command the other runners run: ``hemo train`` with :func:`hemo_pipeline.orchestration.runners.hemo_args`
in the run folder on the shared PVC (the KubernetesPodOperator's layout), launched by ``torchrun
--no-python``, which reads the node count, rank and rendezvous address the operator injects
(PET_* variables). Spreading one training over the processes is ``hemo train``'s job
(data-parallel training); with workers=1 and gpus_per_worker=1 the job is one ordinary pod.

:func:`submit_and_wait` creates the job through the Kubernetes API (``CustomObjectsApi``), polls
its conditions and raises :class:`TrainingJobFailed` with the job's own reason. Only the standard
library is imported at module level (the Airflow DAG imports the runners at parse time).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hemo_pipeline.orchestration.runners import (
    CONTAINER_PROJECT,
    CONTAINER_RUNS,
    GPU_RESOURCE,
    StepSettings,
    hemo_args,
    in_container,
    pod_argv,
    pod_resources,
    step_env,
)

PYTORCHJOB = "PyTorchJob"
TRAINJOB = "TrainJob"
API = {
    PYTORCHJOB: ("kubeflow.org", "v1", "pytorchjobs"),
    TRAINJOB: ("trainer.kubeflow.org", "v1alpha1", "trainjobs"),
}
"""kind -> (group, version, plural) of the custom resource."""
TERMINAL = {PYTORCHJOB: ("Succeeded", "Failed"), TRAINJOB: ("Complete", "Failed")}
"""kind -> (success condition, failure condition): the conditions each controller sets when done."""

PYTORCH_CONTAINER = "pytorch"  # the Training Operator finds the training container by this name
TRAINJOB_NODE = "node"  # the replicated job and container of the torch-distributed runtime
PATCH_MANAGER = "hemo-pipeline"
NAME_LIMIT = 40
"""Job names become pod and service names with suffixes (-master-0, -node-0-0): keep them short."""


@dataclass(frozen=True)
class TrainingJob:
    """What a distributed `hemo train` needs besides the step settings (paths as the runner sees them)."""

    settings: StepSettings
    workers: int = 1
    """N: pods (PyTorchJob Master + Workers, TrainJob nodes)."""
    gpus_per_worker: int = 1
    """M: GPUs, and so torchrun processes, per pod."""
    namespace: str = "hemo"
    pvc: str = "hemo-data"
    min_workers: int | None = None
    """PyTorchJob only: run elastic (c10d rendezvous) with between min_workers and workers pods."""
    runtime: str = "torch-distributed"
    """TrainJob only: the ClusterTrainingRuntime to run on."""
    backoff_limit: int = 3

    def check(self) -> None:
        if self.workers < 1 or self.gpus_per_worker < 1:
            raise ValueError(f"workers and gpus_per_worker must be >= 1, got {self.workers} x {self.gpus_per_worker}")
        if self.min_workers is not None and not 1 <= self.min_workers <= self.workers:
            raise ValueError(f"min_workers must be between 1 and workers ({self.workers}), got {self.min_workers}")


def job_name(run_key: str) -> str:
    """A DNS-1035 name for a run's training job: short, lower case, unique per run key."""
    slug = re.sub(r"[^a-z0-9]+", "-", run_key.lower()).strip("-")
    digest = hashlib.sha1(run_key.encode()).hexdigest()[:8]
    return f"hemo-train-{slug}"[: NAME_LIMIT - 9].rstrip("-") + f"-{digest}"


def _scaled(quantity: str, factor: int) -> str:
    """'4' x 2 -> '8', '32Gi' x 2 -> '64Gi': a pod with M GPUs gets M times a one-GPU pod's share."""
    number, unit = re.fullmatch(r"(\d+)([A-Za-z]*)", quantity).groups()  # type: ignore[union-attr]
    return f"{int(number) * factor}{unit}"


def resources(gpus: int) -> dict[str, dict[str, str]]:
    requests, limits = pod_resources("train")
    return {"requests": {k: _scaled(v, gpus) for k, v in requests.items()},
            "limits": {k: str(gpus) if k == GPU_RESOURCE else _scaled(v, gpus) for k, v in limits.items()}}


def command(job: TrainingJob) -> list[str]:
    """``hemo train`` under torchrun in the run folder (created if needed), as every pod runs it;
    `hemo-torchrun`, so the pod's exit code names why it failed (the worker's code, 128 + N for a
    signal), not always 1; the replicas' restartPolicy still restarts on any failure."""
    inner = in_container(job.settings)
    argv = ["hemo-torchrun", "--no-python", "hemo", *hemo_args("train", Path(CONTAINER_PROJECT), job.settings.overrides)]
    return pod_argv(str(inner.run_dir), {}, argv)


def _env(job: TrainingJob) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in step_env(in_container(job.settings)).items()]


def _pod_parts(job: TrainingJob) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], list[dict[str, Any]]]:
    """(volumes, volume mounts, security context, tolerations): the KubernetesPodOperator's pod setup."""
    uid, gid = job.settings.container_user()
    volumes = [{"name": "hemo", "persistentVolumeClaim": {"claimName": job.pvc}},
               {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "16Gi"}}]
    mounts = [{"name": "hemo", "mountPath": CONTAINER_PROJECT, "subPath": "project"},
              {"name": "hemo", "mountPath": CONTAINER_RUNS, "subPath": "runs"},
              {"name": "dshm", "mountPath": "/dev/shm"}]
    security = {"runAsUser": uid, "runAsGroup": gid, "fsGroup": gid}
    tolerations = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return volumes, mounts, security, tolerations


def _metadata(job: TrainingJob) -> dict[str, Any]:
    return {"name": job_name(job.settings.run_dir.name), "namespace": job.namespace,
            "labels": {"app.kubernetes.io/part-of": "hemo-pipeline", "hemo/step": "train"}}


def pytorchjob(job: TrainingJob) -> dict[str, Any]:
    """A ``kubeflow.org/v1`` PyTorchJob running `hemo train` on ``workers`` pods x ``gpus_per_worker`` GPUs."""
    job.check()
    volumes, mounts, security, tolerations = _pod_parts(job)
    template = {
        "metadata": {"labels": {"app.kubernetes.io/part-of": "hemo-pipeline"}},
        "spec": {
            "securityContext": security,
            "tolerations": tolerations,
            "volumes": volumes,
            "containers": [{
                "name": PYTORCH_CONTAINER, "image": job.settings.image, "command": command(job),
                "env": _env(job), "resources": resources(job.gpus_per_worker), "volumeMounts": mounts,
            }],
        },
    }

    def replicas(count: int) -> dict[str, Any]:
        return {"replicas": count, "restartPolicy": "OnFailure", "template": template}

    spec: dict[str, Any] = {
        "nprocPerNode": str(job.gpus_per_worker),  # a string in the v1 API
        "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": job.backoff_limit},
    }
    if job.min_workers is not None:  # elastic: Workers only, torchrun's c10d rendezvous
        spec["elasticPolicy"] = {"rdzvBackend": "c10d", "minReplicas": job.min_workers, "maxReplicas": job.workers,
                                 "maxRestarts": job.backoff_limit}
        spec["pytorchReplicaSpecs"] = {"Worker": replicas(job.workers)}
    else:
        spec["pytorchReplicaSpecs"] = {"Master": replicas(1)} | ({"Worker": replicas(job.workers - 1)}
                                                                 if job.workers > 1 else {})
    return {"apiVersion": "kubeflow.org/v1", "kind": PYTORCHJOB, "metadata": _metadata(job), "spec": spec}


def trainjob(job: TrainingJob) -> dict[str, Any]:
    """A ``trainer.kubeflow.org/v1alpha1`` TrainJob running `hemo train` on ``workers`` nodes x
    ``gpus_per_worker`` processes."""
    job.check()
    if job.min_workers is not None:
        raise ValueError("min_workers (elastic training) is a PyTorchJob setting; a TrainJob has a fixed numNodes")
    volumes, mounts, security, tolerations = _pod_parts(job)
    pod_patch = {"securityContext": security, "tolerations": tolerations, "volumes": volumes,
                 "containers": [{"name": TRAINJOB_NODE, "volumeMounts": mounts}]}
    return {
        "apiVersion": "trainer.kubeflow.org/v1alpha1",
        "kind": TRAINJOB,
        "metadata": _metadata(job),
        "spec": {
            "runtimeRef": {"name": job.runtime, "apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime"},
            "trainer": {
                "image": job.settings.image, "command": command(job), "env": _env(job),
                "numNodes": job.workers, "numProcPerNode": job.gpus_per_worker,
                "resourcesPerNode": resources(job.gpus_per_worker),
            },
            "runtimePatches": [{"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {
                "replicatedJobs": [{"name": TRAINJOB_NODE, "template": {"spec": {"template": {"spec": pod_patch}}}}],
            }}}}],
        },
    }


def render(kind: str, job: TrainingJob) -> dict[str, Any]:
    if kind == PYTORCHJOB:
        return pytorchjob(job)
    if kind == TRAINJOB:
        return trainjob(job)
    raise ValueError(f"unknown training job kind {kind!r}; use {PYTORCHJOB} or {TRAINJOB}")


class TrainingJobFailed(RuntimeError):
    """The job's controller marked it Failed (or it did not finish in time); the message holds its reason."""


def job_state(manifest: Mapping[str, Any]) -> tuple[str | None, str]:
    """("succeeded" | "failed" | None while running, the latest condition's reason and message)."""
    success, failure = TERMINAL[manifest["kind"]]
    conditions = [c for c in (manifest.get("status") or {}).get("conditions") or [] if str(c.get("status")) == "True"]
    latest = conditions[-1] if conditions else {}
    detail = ": ".join(str(latest[k]) for k in ("type", "reason", "message") if latest.get(k))
    for condition in reversed(conditions):
        if condition.get("type") == failure:
            return "failed", ": ".join(str(condition[k]) for k in ("reason", "message") if condition.get(k)) or failure
        if condition.get("type") == success:
            return "succeeded", detail
    return None, detail


def kubernetes_api() -> Any:
    """CustomObjectsApi from the in-cluster service account, else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def submit_and_wait(manifest: Mapping[str, Any], api: Any | None = None, poll_s: float = 30.0,
                    timeout_s: float | None = None, max_poll_errors: int = 5,
                    sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """Create the job and wait until its controller marks it done; return its last state.

    A job of that name that already exists (the orchestrator retried after losing track of it) is
    waited for, not created again. A failed poll (the API server restarting) is retried up to
    ``max_poll_errors`` times in a row. Raises :class:`TrainingJobFailed` with the job's reason when
    it fails or ``timeout_s`` passes."""
    group, version, plural = API[manifest["kind"]]
    meta = manifest["metadata"]
    where = {"group": group, "version": version, "namespace": meta["namespace"], "plural": plural}
    label = f"{manifest['kind']} {meta['namespace']}/{meta['name']}"
    api = api if api is not None else kubernetes_api()
    try:
        api.create_namespaced_custom_object(**where, body=dict(manifest))
        log(f"created {label}")
    except Exception as exc:  # kubernetes.client.ApiException: 409 = it exists already
        if getattr(exc, "status", None) != 409:
            raise
        log(f"{label} exists already: waiting for it")
    deadline = None if timeout_s is None else clock() + timeout_s
    errors = 0
    last = ""
    while True:
        try:
            current = api.get_namespaced_custom_object(**where, name=meta["name"])
            errors = 0
        except Exception as exc:
            errors += 1
            if getattr(exc, "status", None) in (401, 403, 404) or errors > max_poll_errors:
                raise TrainingJobFailed(f"{label}: cannot read its status ({exc})") from exc
            current = None
        if current is not None:
            state, detail = job_state(current)
            if detail != last:
                log(f"{label}: {detail}")
                last = detail
            if state == "succeeded":
                return dict(current)
            if state == "failed":
                raise TrainingJobFailed(f"{label} failed: {detail}")
        if deadline is not None and clock() >= deadline:
            raise TrainingJobFailed(f"{label} did not finish within {timeout_s:.0f} s (last: {last or 'no condition'})")
        sleep(poll_s)


def run_training_job(settings: StepSettings, kind: str = "PyTorchJob", workers: int = 1, gpus_per_worker: int = 1,
                     timeout_s: float | None = None, **options: Any) -> dict[str, Any]:
    """`hemo train` on ``workers`` pods x ``gpus_per_worker`` GPUs as a Kubeflow PyTorchJob or a
    Trainer v2 TrainJob (``kind``), submitted through the Kubernetes API and waited for; raises
    :class:`TrainingJobFailed` with the job's reason. ``options`` are
    :class:`TrainingJob` fields (namespace, pvc, min_workers, runtime)."""
    job = TrainingJob(settings=settings, workers=workers, gpus_per_worker=gpus_per_worker, **options)
    return submit_and_wait(render(kind, job), timeout_s=timeout_s)
