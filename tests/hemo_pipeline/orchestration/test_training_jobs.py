"""Distributed `hemo train` on Kubernetes: PyTorchJob and TrainJob manifests, checked offline against
Kubeflow's published API models (in .venv-kfp), and the submit-and-wait loop against a fake
Kubernetes API that plays scripted job statuses (no cluster here)."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from hemo_pipeline.orchestration.runners import CONTAINER_PROJECT, GPU_RESOURCE, StepSettings, hemo_args
from hemo_pipeline.orchestration.training_jobs import (
    NAME_LIMIT,
    PYTORCHJOB,
    TRAINJOB,
    TrainingJob,
    TrainingJobFailed,
    job_name,
    pytorchjob,
    render,
    submit_and_wait,
    trainjob,
)
from tests.pipelines.kfp_venv import kfp_python

RUN_KEY = "manual__2026-01-01T00:00:00+00:00"


@pytest.fixture
def settings(tmp_path: Path) -> StepSettings:
    return StepSettings(project_dir=tmp_path / "project", run_dir=tmp_path / "runs" / "manual__2026-01-01T00_00_00_00_00",
                        mlflow_uri="http://mlflow:5000", dag_run_id=RUN_KEY, parent_run_id="abc123",
                        overrides={"epochs": 20, "image_size": 512}, image="registry/hemo:1", uid=1000, gid=1000)


def _train_argv(settings: StepSettings) -> list[str]:
    return ["hemo-torchrun", "--no-python", "hemo", *hemo_args("train", Path(CONTAINER_PROJECT), settings.overrides)]


def _container(template: dict[str, Any]) -> dict[str, Any]:
    (container,) = template["spec"]["containers"]
    return container


def test_pytorchjob_has_a_master_and_n_minus_1_workers_each_with_m_gpus(settings: StepSettings) -> None:
    manifest = pytorchjob(TrainingJob(settings=settings, workers=4, gpus_per_worker=2))
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert {name: spec["replicas"] for name, spec in replicas.items()} == {"Master": 1, "Worker": 3}
    assert manifest["spec"]["nprocPerNode"] == "2" and "elasticPolicy" not in manifest["spec"]
    for spec in replicas.values():
        assert spec["restartPolicy"] == "OnFailure"
        container = _container(spec["template"])
        assert container["name"] == "pytorch" and container["image"] == "registry/hemo:1"
        assert container["resources"]["limits"][GPU_RESOURCE] == "2"
        assert GPU_RESOURCE not in container["resources"]["requests"]
        # the launcher: cd into the run folder on the PVC, then torchrun runs exactly `hemo train <runner args>`
        assert container["command"][4] == f"/opt/hemo-runs/{settings.run_dir.name}"
        assert container["command"][5:] == _train_argv(settings)
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000" and env["HEMO_PARENT_RUN_ID"] == "abc123"
        assert env["HEMO_PROJECT_DIR"] == CONTAINER_PROJECT
        pod = spec["template"]["spec"]
        assert pod["securityContext"] == {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}
        assert {v["name"] for v in pod["volumes"]} == {"hemo", "dshm"}


def test_one_worker_is_a_lone_master_and_min_workers_makes_it_elastic(settings: StepSettings) -> None:
    single = pytorchjob(TrainingJob(settings=settings))
    assert list(single["spec"]["pytorchReplicaSpecs"]) == ["Master"]
    elastic = pytorchjob(TrainingJob(settings=settings, workers=4, gpus_per_worker=1, min_workers=2))
    assert list(elastic["spec"]["pytorchReplicaSpecs"]) == ["Worker"]
    assert elastic["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 4
    assert elastic["spec"]["elasticPolicy"] == {"rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 4,
                                                "maxRestarts": 3}
    with pytest.raises(ValueError):
        pytorchjob(TrainingJob(settings=settings, workers=2, min_workers=3))
    with pytest.raises(ValueError):
        trainjob(TrainingJob(settings=settings, workers=2, min_workers=1))
    with pytest.raises(ValueError):
        render("MPIJob", TrainingJob(settings=settings))


def test_trainjob_has_n_nodes_of_m_processes_and_the_pvc_through_a_runtime_patch(settings: StepSettings) -> None:
    manifest = trainjob(TrainingJob(settings=settings, workers=3, gpus_per_worker=4))
    assert (manifest["apiVersion"], manifest["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    trainer = manifest["spec"]["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (3, 4)
    assert trainer["resourcesPerNode"]["limits"][GPU_RESOURCE] == "4"
    assert trainer["resourcesPerNode"]["requests"] == {"cpu": "16", "memory": "128Gi"}  # 4 x a one-GPU pod's share
    assert trainer["command"][5:] == _train_argv(settings)
    assert manifest["spec"]["runtimeRef"]["name"] == "torch-distributed"
    (patch,) = manifest["spec"]["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]["spec"]
    assert node["name"] == "node" and pod["containers"][0]["name"] == "node"
    assert {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]} == {"/opt/hemo", "/opt/hemo-runs", "/dev/shm"}
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "hemo-data"}


@pytest.mark.parametrize("key", [RUN_KEY, "scheduled__2026-01-05T03:00:00+00:00", "x" * 200, "Run_With.CAPS",
                                 "9f1c2c0e-5d1e-4c43-8f0e-0a6e7e0d2b11"])
def test_job_names_are_dns_1035_labels_within_the_limit(key: str) -> None:
    name = job_name(key)
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= NAME_LIMIT
    assert job_name(key + "x") != name  # runs never share a job


# --- offline schema checks (Kubeflow's models, .venv-kfp) ----------------------------------------


def _validate(manifests: list[dict[str, Any]]) -> tuple[int, dict[str, list[str]]]:
    python = kfp_python()
    result = subprocess.run([python, "-m", "pipelines.validate_manifests", "-"], input=json.dumps(manifests),
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[3], timeout=120)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def test_rendered_manifests_pass_kubeflows_api_models(settings: StepSettings) -> None:
    manifests = [render(kind, TrainingJob(settings=settings, workers=workers, gpus_per_worker=gpus, **extra))
                 for kind in (PYTORCHJOB, TRAINJOB) for workers, gpus in ((1, 1), (4, 8))
                 for extra in ({},)] + [pytorchjob(TrainingJob(settings=settings, workers=4, min_workers=2))]
    for i, manifest in enumerate(manifests):  # distinct names, so each gets its own report line
        manifest["metadata"]["name"] += f"-{i}"
    code, report = _validate(manifests)
    assert len(report) == len(manifests)
    assert code == 0 and all(problems == [] for problems in report.values()), report


def test_the_offline_check_catches_typos_wrong_types_and_bad_enums(settings: StepSettings) -> None:
    torch_job = pytorchjob(TrainingJob(settings=settings, workers=2))
    worker = torch_job["spec"]["pytorchReplicaSpecs"]["Worker"]
    worker["replica"] = worker.pop("replicas")
    worker["restartPolicy"] = "Sometimes"
    worker["template"]["spec"]["containers"][0]["name"] = "trainer"
    train_job = trainjob(TrainingJob(settings=settings, workers=2))
    train_job["metadata"]["name"] += "-t"
    train_job["spec"]["trainer"]["numNodes"] = "two"
    typo_job = trainjob(TrainingJob(settings=settings, workers=2))
    typo_job["metadata"]["name"] += "-typo"
    typo_job["spec"]["trainer"]["numNode"] = typo_job["spec"]["trainer"].pop("numNodes")
    code, report = _validate([torch_job, train_job, typo_job])
    assert code == 1
    torch_problems = " | ".join(report[f"PyTorchJob {torch_job['metadata']['name']}"])
    assert "unknown key /spec/pytorchReplicaSpecs/Worker/replica" in torch_problems
    assert "'Sometimes'" in torch_problems and "no container named 'pytorch'" in torch_problems
    assert "numNodes" in " ".join(report[f"TrainJob {train_job['metadata']['name']}"])
    assert report[f"TrainJob {typo_job['metadata']['name']}"] == ["unknown key /spec/trainer/numNode"]


# --- submit and wait, against a fake Kubernetes API ----------------------------------------------


class ApiException(Exception):
    """Stands in for kubernetes.client.ApiException: the loop only reads ``status``."""

    def __init__(self, status: int) -> None:
        super().__init__(f"({status})")
        self.status = status


class FakeCustomObjectsApi:
    """The two CustomObjectsApi calls the waiter makes, replaying one scripted status per poll."""

    def __init__(self, statuses: list[Any], exists: bool = False) -> None:
        self.statuses = list(statuses)
        self.exists = exists
        self.created: list[dict[str, Any]] = []
        self.polls = 0

    def create_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str,
                                        body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if self.exists:
            raise ApiException(409)
        assert (group, version) == tuple(body["apiVersion"].split("/")) and namespace == body["metadata"]["namespace"]
        assert plural == {"PyTorchJob": "pytorchjobs", "TrainJob": "trainjobs"}[body["kind"]]
        self.created.append(body)
        return body

    def get_namespaced_custom_object(self, group: str, version: str, namespace: str, plural: str, name: str,
                                     **kwargs: Any) -> dict[str, Any]:
        self.polls += 1
        step = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        if isinstance(step, Exception):
            raise step
        kind = "TrainJob" if group.startswith("trainer.") else "PyTorchJob"
        return {"kind": kind, "metadata": {"name": name, "namespace": namespace}, "status": step}


def test_the_fake_api_has_the_real_clients_signatures() -> None:
    from kubernetes.client import CustomObjectsApi

    for method in ("create_namespaced_custom_object", "get_namespaced_custom_object"):
        real = list(inspect.signature(getattr(CustomObjectsApi, method)).parameters)
        fake = list(inspect.signature(getattr(FakeCustomObjectsApi, method)).parameters)
        assert fake == real, method


def _conditions(*items: tuple[str, str, str]) -> dict[str, Any]:
    return {"conditions": [{"type": t, "status": "True", "reason": r, "message": m} for t, r, m in items]}


CREATED = ("Created", "PyTorchJobCreated", "PyTorchJob hemo is created.")
RUNNING = ("Running", "PyTorchJobRunning", "PyTorchJob hemo is running.")


def test_waits_through_running_until_succeeded(settings: StepSettings) -> None:
    api = FakeCustomObjectsApi([{}, _conditions(CREATED), _conditions(CREATED, RUNNING),
                                _conditions(CREATED, RUNNING, ("Succeeded", "PyTorchJobSucceeded", "done"))])
    slept: list[float] = []
    manifest = pytorchjob(TrainingJob(settings=settings, workers=2))
    final = submit_and_wait(manifest, api=api, poll_s=7, sleep=slept.append, log=lambda _: None)
    assert api.created == [manifest] and api.polls == 4 and slept == [7, 7, 7]
    assert final["status"]["conditions"][-1]["type"] == "Succeeded"


def test_a_failed_job_raises_with_its_reason(settings: StepSettings) -> None:
    failed = ("Failed", "PyTorchJobFailed", "PyTorchJob hemo is failed because 1 Master replica(s) failed.")
    api = FakeCustomObjectsApi([_conditions(CREATED, RUNNING), _conditions(CREATED, RUNNING, failed)])
    with pytest.raises(TrainingJobFailed, match=r"failed: PyTorchJobFailed: PyTorchJob hemo is failed because 1 Master"):
        submit_and_wait(pytorchjob(TrainingJob(settings=settings)), api=api, sleep=lambda _: None, log=lambda _: None)


def test_trainjob_complete_and_failed_conditions(settings: StepSettings) -> None:
    manifest = trainjob(TrainingJob(settings=settings, workers=2, gpus_per_worker=2))
    done = FakeCustomObjectsApi([_conditions(("Complete", "JobsCompleted", "TrainJob is completed"))])
    assert submit_and_wait(manifest, api=done, sleep=lambda _: None, log=lambda _: None)
    broken = FakeCustomObjectsApi([_conditions(("Failed", "TrainingRuntimeNotFound", "no torch-distributed runtime"))])
    with pytest.raises(TrainingJobFailed, match="TrainingRuntimeNotFound: no torch-distributed runtime"):
        submit_and_wait(manifest, api=broken, sleep=lambda _: None, log=lambda _: None)


def test_an_existing_job_is_waited_for_and_brief_api_errors_are_ridden_out(settings: StepSettings) -> None:
    api = FakeCustomObjectsApi([ApiException(503), ApiException(500), _conditions(CREATED, RUNNING),
                                _conditions(("Succeeded", "PyTorchJobSucceeded", "done"))], exists=True)
    submit_and_wait(pytorchjob(TrainingJob(settings=settings)), api=api, sleep=lambda _: None, log=lambda _: None)
    assert api.created == [] and api.polls == 4
    forbidden = FakeCustomObjectsApi([ApiException(403)])
    with pytest.raises(TrainingJobFailed, match="cannot read its status"):
        submit_and_wait(pytorchjob(TrainingJob(settings=settings)), api=forbidden, sleep=lambda _: None,
                        log=lambda _: None)


def test_a_job_that_never_finishes_times_out_with_its_last_condition(settings: StepSettings) -> None:
    now = [0.0]
    api = FakeCustomObjectsApi([_conditions(CREATED, RUNNING)])
    with pytest.raises(TrainingJobFailed, match=r"did not finish within 60 s \(last: Running: PyTorchJobRunning"):
        submit_and_wait(pytorchjob(TrainingJob(settings=settings)), api=api, poll_s=30, timeout_s=60,
                        sleep=lambda s: now.__setitem__(0, now[0] + s), clock=lambda: now[0], log=lambda _: None)
    assert api.polls == 3  # t = 0, 30, 60
