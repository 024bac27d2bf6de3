"""Check rendered training-job manifests offline, against Kubeflow's own published API models.

    .venv-kfp/bin/python -m pipelines.validate_manifests job.json [more.json ...]   ('-' reads stdin)

Each file holds one manifest or a list of them (PyTorchJob, TrainJob); the report is one JSON
object ``{"<kind> <name>": ["problem", ...]}`` on stdout, and the exit code is 1 when any manifest
has a problem.

* **TrainJob** (``trainer.kubeflow.org/v1alpha1``): ``kubeflow-trainer-api``'s pydantic models,
  ``TrainerV1alpha1TrainJob.from_dict``: field types (``numNodes: "two"``), required fields
  (``runtimeRef``), the nested Kubernetes types (quantities, env, volumes).
* **PyTorchJob** (``kubeflow.org/v1``): ``kubeflow-training``'s OpenAPI models, deserialised as
  ``KubeflowOrgV1PyTorchJob``: required fields (``pytorchReplicaSpecs``, a container's ``name``)
  and the nested ``V1PodTemplateSpec``. Those models do not check enums, so the CRD's enums are
  checked here: replica types Master/Worker, restartPolicy, cleanPodPolicy, rdzvBackend, and the
  container the operator needs, named ``pytorch``.
* Both model sets silently drop keys they do not know, so every key of the manifest that is
  missing from the model's round trip is reported as unknown: a typo such as ``numNode``.

Why a separate tool in .venv-kfp: ``kubeflow-training`` needs kubernetes<36, which Airflow's
Kubernetes provider in the main venv excludes, and the CRDs' own OpenAPI schemas ship in no
package (they live in the operators' repositories). The tests render the manifests in the main
venv and pipe them here.
"""

import json
import sys
from pathlib import Path
from typing import Any

PYTORCHJOB_ENUMS = {
    "replica types": {"Master", "Worker"},
    "restartPolicy": {"Always", "OnFailure", "Never", "ExitCode"},
    "cleanPodPolicy": {"All", "Running", "None"},
    "rdzvBackend": {"c10d", "etcd", "etcd-v2"},
}
RUNTIME_KINDS = {"ClusterTrainingRuntime", "TrainingRuntime"}


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key path of a JSON document ('/spec/trainer/numNodes'; list items by index)."""
    paths: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}/{key}"
            paths.add(path)
            paths |= key_paths(item, path)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            paths |= key_paths(item, f"{prefix}/{index}")
    return paths


def unknown_keys(manifest: dict[str, Any], round_trip: dict[str, Any]) -> list[str]:
    return [f"unknown key {path}" for path in sorted(key_paths(manifest) - key_paths(round_trip))]


def check_trainjob(manifest: dict[str, Any]) -> list[str]:
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    try:
        model = TrainerV1alpha1TrainJob.from_dict(manifest)
    except Exception as exc:  # pydantic.ValidationError and the models' own ValueErrors
        return [f"invalid: {exc}"]
    problems = unknown_keys(manifest, model.to_dict())
    kind = (manifest.get("spec", {}).get("runtimeRef") or {}).get("kind")
    if kind is not None and kind not in RUNTIME_KINDS:
        problems.append(f"spec.runtimeRef.kind {kind!r} is not one of {sorted(RUNTIME_KINDS)}")
    return problems


def check_pytorchjob(manifest: dict[str, Any]) -> list[str]:
    from kubeflow.training import ApiClient

    api = ApiClient()
    try:
        job = api._ApiClient__deserialize(manifest, "KubeflowOrgV1PyTorchJob")  # the generated client's own path
    except Exception as exc:
        return [f"invalid: {exc}"]
    problems = unknown_keys(manifest, api.sanitize_for_serialization(job))
    spec = manifest.get("spec", {})
    for replica, replica_spec in (spec.get("pytorchReplicaSpecs") or {}).items():
        if replica not in PYTORCHJOB_ENUMS["replica types"]:
            problems.append(f"replica type {replica!r} is not one of {sorted(PYTORCHJOB_ENUMS['replica types'])}")
        policy = replica_spec.get("restartPolicy")
        if policy is not None and policy not in PYTORCHJOB_ENUMS["restartPolicy"]:
            problems.append(f"{replica}.restartPolicy {policy!r} is not one of {sorted(PYTORCHJOB_ENUMS['restartPolicy'])}")
        names = [c.get("name") for c in replica_spec.get("template", {}).get("spec", {}).get("containers", [])]
        if "pytorch" not in names:
            problems.append(f"{replica}: no container named 'pytorch' (the operator runs that one), got {names}")
    clean = (spec.get("runPolicy") or {}).get("cleanPodPolicy")
    if clean is not None and clean not in PYTORCHJOB_ENUMS["cleanPodPolicy"]:
        problems.append(f"runPolicy.cleanPodPolicy {clean!r} is not one of {sorted(PYTORCHJOB_ENUMS['cleanPodPolicy'])}")
    backend = (spec.get("elasticPolicy") or {}).get("rdzvBackend")
    if backend is not None and backend not in PYTORCHJOB_ENUMS["rdzvBackend"]:
        problems.append(f"elasticPolicy.rdzvBackend {backend!r} is not one of {sorted(PYTORCHJOB_ENUMS['rdzvBackend'])}")
    return problems


CHECKS = {("kubeflow.org/v1", "PyTorchJob"): check_pytorchjob,
          ("trainer.kubeflow.org/v1alpha1", "TrainJob"): check_trainjob}


def check(manifest: dict[str, Any]) -> list[str]:
    checker = CHECKS.get((str(manifest.get("apiVersion")), str(manifest.get("kind"))))
    if checker is None:
        return [f"no model for {manifest.get('apiVersion')}/{manifest.get('kind')}; known: {sorted(CHECKS)}"]
    return checker(manifest)


def main(argv: list[str] | None = None) -> int:
    sources = (argv if argv is not None else sys.argv[1:]) or ["-"]
    report: dict[str, list[str]] = {}
    for source in sources:
        document = json.load(sys.stdin) if source == "-" else json.loads(Path(source).read_text())
        for manifest in document if isinstance(document, list) else [document]:
            name = f"{manifest.get('kind')} {(manifest.get('metadata') or {}).get('name')}"
            report[name] = check(manifest)
    print(json.dumps(report, indent=2))
    return 1 if any(report.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
