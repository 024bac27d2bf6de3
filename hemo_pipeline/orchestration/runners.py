"""How an orchestrator runs one `hemo <step>`: in the project venv, in Docker, or on Kubernetes.

The Airflow DAG stays a thin caller: each task names a step and this module turns it into
(a) a local `hemo` subprocess, (b) a DockerOperator on the training image with all GPUs
requested, or (c) a KubernetesPodOperator with `nvidia.com/gpu` limits, GPUs only for the steps
that use them. Every variant runs the same command line with the same environment, so a step
behaves identically whichever runner executes it. The Kubeflow pipeline (pipelines/kubeflow.py)
builds its containers from the same pieces (:func:`hemo_args`, :func:`step_env`,
:func:`pod_resources`, :func:`pod_argv`), and so does
:func:`hemo_pipeline.orchestration.training_jobs.run_training_job` (`hemo train` as a distributed
PyTorchJob/TrainJob).

Contracts (README, "Orchestration"):

* Results travel back through XCom, never through a shared disk: a step writes its small JSON
  result (:mod:`hemo_pipeline.services.results`) to HEMO_RESULT_FILE, which each runner points where it can
  read it: a file beside the local process, a file retrieved from the stopped container, the
  KubernetesPodOperator's /airflow/xcom/return.json.
* Permissions: the run folder is created before the container starts and handed to the uid/gid
  the container runs as (``StepSettings.uid/gid``; default the worker's own), outputs are written
  0644 (the umask), so the Airflow side can read every report whatever uid wrote it.
* Lineage: HEMO_PROJECT_DIR points the step at the project (data.dvc, git) whatever its working
  folder; images carry their commit as HEMO_GIT_COMMIT.
* Run folders: ``<runs>/<safe_run_key(run id)>``, one folder per run id, always inside the runs
  folder (:func:`safe_run_key`).
* Credentials never travel as a container's environment or arguments (``docker inspect``, pod
  specs and task logs show those): Docker steps mount the secrets volume read-only and get only
  its path (HEMO_SECRETS_FILE, read by ``hemo`` at start: :mod:`hemo_pipeline.services.credentials`), pods
  take the keys of a Kubernetes Secret through ``envFrom`` (``StepSettings.step_secrets``).
* Exit codes: 1 (data failed validation) and 2 (user error) fail the task without retries; any
  other failure (3 = transient) is retried.

Only the standard library is imported at module level: the DAG file imports this at parse time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hemo_pipeline.exit_codes import NO_RETRY_EXIT_CODES

RUNNERS = ("local", "docker", "kubernetes")
GPU_STEPS = frozenset({"train", "refine", "score"})
"""Steps that run a network over many slices; validate/gate/evaluate stay on the CPU."""
DATA_PARALLEL_STEPS = frozenset({"train", "refine"})
"""Steps that run one process per GPU under torchrun (hemo_model/training/distributed.py)."""


def torchrun_entrypoint(processes: str) -> list[str]:
    """The container entrypoint that starts ``hemo`` once per GPU on this host: torchrun's
    ``--nproc_per_node gpu`` counts the GPUs the container sees (1 GPU: one ordinary process).
    No torchrun restarts: a failure fails the task, and the task's retry resumes from last.pt (a
    group restarted in place by torchrun's agent was seen to hang in gloo's connect; a relaunch
    starts a fresh agent and store; tests/e2e/test_distributed.py). `hemo-torchrun` is torchrun
    that exits with the failed worker's code (torchrun's own is 1 for any failure, which would read
    as "validation failed, do not retry"; hemo_pipeline/torchrun_launch.py)."""
    return ["hemo-torchrun", "--standalone", "--nproc_per_node", processes, "--max-restarts", "0", "--no-python", "hemo"]
GPU_RESOURCE = "nvidia.com/gpu"

DEFAULT_IMAGE = "ghcr.io/hemo-pipeline/hemo:0.1.0"
CONTAINER_PROJECT = "/opt/hemo"  # where the project (data/, params.yaml) is mounted in containers
CONTAINER_RUNS = "/opt/hemo-runs"
CONTAINER_RESULT = "/tmp/hemo-result.json"
POD_RESULT = "/airflow/xcom/return.json"
CONTAINER_SECRETS = "/run/hemo-secrets"
"""Where a Docker step container finds its private credentials (the read-only secrets volume)."""
STEP_SECRETS_FILE = "hemo-step.env"
"""The file in it: ``KEY=value`` lines read by ``hemo`` at start (hemo_pipeline.services.credentials)."""
RESULTS_DIR = ".hemo-results"  # the local runner's result files, inside the run folder
USER_ERROR_CODES = NO_RETRY_EXIT_CODES
"""`hemo` exit codes a retry cannot fix (1: validation failed, 2: user error, 70: a bug); the
table is components/errors.py's."""

OVERRIDE_KEYS = {"epochs": "train.epochs", "image_size": "train.image_size",
                 "min_improvement": "gate.min_improvement"}
"""DAG params that override one setting each (validated by the settings layer in the step)."""


RUN_KEY_PLAIN = re.compile(r"[a-z0-9][a-z0-9_-]{0,99}")
"""Run ids kept as they are: lower case, digits, '_' and '-' only (Kubeflow's run UUIDs, kfp.local's ids)."""
RUN_KEY_PREFIX = 80
RUN_KEY_DIGEST = 16


def safe_run_key(run_id: str) -> str:
    """The one mapping from an orchestrator's run id to the name of its run folder.

    Airflow accepts run ids such as '..', 'a/b' or 'a:b' (its default run-id pattern), and a
    folder named after a sanitised id could be the runs folder's parent, or shared by two runs
    ('a:b' and 'a_b'), so that ``--resume auto`` continued another run's checkpoint. So:

    * an id that is already a plain name (:data:`RUN_KEY_PLAIN`: lower case, digits, '_', '-';
      Kubeflow's run UUIDs are) is kept as it is, which the compiled Kubeflow pipeline relies on:
      it names the folder by the run-id placeholder, resolved only on the cluster;
    * any other id becomes a readable prefix (every character outside ``[A-Za-z0-9_-]`` made
      '_', no leading '-', at most 80 characters) + '.' + the first 16 hex digits of the SHA-256
      of the raw id.

    The name is never '.', '..' or empty and holds no separator; a kept name has no '.' and a
    hashed one has exactly one, followed by the digest of the raw id, so two distinct ids never
    share a folder (short of a 64-bit hash collision), not even on a case-insensitive file system
    (kept names are lower case, digests are lower-case hex)."""
    if RUN_KEY_PLAIN.fullmatch(run_id):
        return run_id
    prefix = re.sub(r"[^A-Za-z0-9_-]", "_", run_id).lstrip("-")[:RUN_KEY_PREFIX] or "run"
    digest = hashlib.sha256(run_id.encode("utf-8", "surrogatepass")).hexdigest()[:RUN_KEY_DIGEST]
    return f"{prefix}.{digest}"


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
    extra_args: tuple[str, ...] = ()
    """Arguments appended to the step's command line (a scoring shard, a model version)."""
    uid: int | None = None
    gid: int | None = None
    """The uid/gid containers run as (HEMO_CONTAINER_UID/GID); None = the worker's own."""
    step_secrets: str | None = None
    """Where step containers get their MLflow credentials (HEMO_STEP_SECRETS): the Docker volume
    holding :data:`STEP_SECRETS_FILE`, mounted read-only at :data:`CONTAINER_SECRETS` with only its
    path as environment (docker runner), or the Kubernetes Secret whose keys become the pod's
    environment through ``envFrom`` (kubernetes runner). Either way no credential shows in
    ``docker inspect``, the pod spec or the task log. None = the steps get no credentials."""

    def container_user(self) -> tuple[int, int]:
        return (self.uid if self.uid is not None else os.getuid(), self.gid if self.gid is not None else os.getgid())


def set_args(overrides: Mapping[str, Any]) -> list[str]:
    """``--set section.key=value`` for each DAG override that was given (None = not given)."""
    args: list[str] = []
    for key, value in overrides.items():
        if value is None:
            continue
        setting = OVERRIDE_KEYS.get(key, key)
        if "." not in setting:
            raise ValueError(f"override {key!r} is neither a DAG param ({sorted(OVERRIDE_KEYS)}) nor section.key")
        args += ["--set", f"{setting}={json.dumps(value) if not isinstance(value, str) else value}"]
    return args


def hemo_args(step: str, project: Path, overrides: Mapping[str, Any]) -> list[str]:
    """The `hemo` argument list of a step. Outputs use the step's defaults (outputs/, reports/)
    relative to the working folder, which is the run's own folder: runs never share outputs.
    Train and refine resume automatically (--resume auto) when a retry finds their checkpoint."""
    data = str(project / "data")
    common = ["--params", str(project / "params.yaml"), *set_args(overrides)]
    if step == "start-run":
        return ["start-run", *common]
    if step == "sync-data":
        return ["sync-data", "--project", str(project)]
    if step == "validate":
        return ["validate", "--data", data, "--reports", "reports/validation", *common]
    if step in ("train", "refine"):
        return [step, "--data", data, "--resume", "auto", *common]
    if step in ("evaluate", "gate"):
        return [step, "--data", data, *common]
    if step == "score":
        return ["score", "--data", str(project / "data" / "test"), "--out", "outputs/predictions.csv", *common]
    if step == "plan-scoring":
        return ["plan-scoring", "--data", str(project / "data" / "test")]
    if step == "merge-scores":
        return ["merge-scores", "--out", "outputs/predictions.csv"]
    if step == "end-run":
        return ["end-run"]
    if step == "report":
        return ["report", "--exams", "outputs/exams.csv", *common]
    raise ValueError(f"unknown step {step!r}")


REPORT_VARIABLES = ("mapping", "source", "out", "push", "allow_http")
"""The site's report configuration, Airflow Variables ``hemo_report_<name>``: ``mapping`` (the
private UID mapping of `hemo import-dicom --mapping`), ``source`` (the folder, or the DICOMweb URL,
that holds the scored series), ``out`` (a private folder; each DAG run writes into its own
subfolder), optional ``push`` (DICOMweb URL to store the objects on) and ``allow_http`` (``true``
for a plain-http PACS on a trusted network)."""
REPORT_REQUIRED = ("mapping", "source", "out")


class ReportNotConfigured(Exception):
    """No report configuration at all: the site has no PACS to report to (the task is skipped)."""


def report_args(config: Mapping[str, str | None], run_key: str) -> list[str]:
    """The `hemo report` arguments of a DAG run from the site's configuration (:data:`REPORT_VARIABLES`):
    ``--dicomweb`` for a source that is an http(s) URL, else ``--dicom``; the objects go to
    ``<out>/<run_key>`` so runs never overwrite each other. Nothing configured raises
    :class:`ReportNotConfigured`; any Variable set without all three required ones is a ValueError
    naming what is missing (a site that set some of it meant to report: skipping silently would
    hide that), and so are relative paths (steps run in the run folder) and URLs with credentials
    (the task log shows the command line)."""
    given = {k: str(v).strip() for k, v in config.items() if k in REPORT_VARIABLES and v is not None and str(v).strip()}
    if not given:
        raise ReportNotConfigured("no report configured (Airflow Variables "
                                  + ", ".join(f"hemo_report_{k}" for k in REPORT_REQUIRED) + ")")
    missing = [f"hemo_report_{k}" for k in REPORT_REQUIRED if k not in given]
    if missing:
        raise ValueError(f"the report is configured only in part: set {', '.join(missing)} as well "
                         "(or unset every hemo_report_* Variable to skip the report)")
    allow = given.get("allow_http", "false").lower()
    if allow not in ("true", "false"):
        raise ValueError(f"hemo_report_allow_http is {allow!r}; set true or false")
    source = given["source"]
    web = re.match(r"(?i)https?://", source) is not None
    for name in ("source", "push"):
        if name in given and re.match(r"(?i)[a-z][a-z0-9+.-]*://[^/?#]*@", given[name]):
            raise ValueError(f"hemo_report_{name} carries credentials (user:password@), which the task log and the "
                             "process list would show: put them in the worker's HEMO_DICOMWEB_TOKEN or "
                             "HEMO_DICOMWEB_USERNAME/HEMO_DICOMWEB_PASSWORD and give the URL without them")
    for name in ("mapping", "out", *(() if web else ("source",))):
        if not Path(given[name]).is_absolute():  # steps run in the run folder: a relative path would land there
            raise ValueError(f"hemo_report_{name} must be an absolute path on the worker (it is {given[name]!r})")
    args = ["--mapping", given["mapping"], *(["--dicomweb", source] if web else ["--dicom", source]),
            "--out", str(Path(given["out"]) / run_key)]
    if "push" in given:
        args += ["--push", given["push"]]
    return args + (["--allow-http"] if allow == "true" else [])


def shard_args(index: Any, count: Any, model: str) -> list[str]:
    """The `hemo score` arguments of shard ``index`` of ``count``: its part of the folder and the
    one model version every shard uses (values or, while Kubeflow compiles, placeholders)."""
    return ["--shard", f"{index}/{count}", "--model", str(model)]


def result_name(step: str, args: tuple[str, ...] | list[str] = ()) -> str:
    """The name of a step's result file in the run folder: ``score.shard-I-of-N`` for a shard, so
    that shards running side by side (mapped tasks, a parallel-for) never share one."""
    if "--shard" in args[:-1]:
        index, _, count = str(args[list(args).index("--shard") + 1]).partition("/")
        return f"{step}.shard-{index}-of-{count}"
    return step


def command(step: str, settings: StepSettings, project: Path | None = None) -> list[str]:
    """The full `hemo` argument list a runner executes: the step's arguments and its extra ones."""
    return [*hemo_args(step, project or settings.project_dir, settings.overrides), *settings.extra_args]


def pod_resources(step: str) -> tuple[dict[str, str], dict[str, str]]:
    """(requests, limits) of a step's pod, one GPU for the GPU steps only. One table for every
    Kubernetes runner (KubernetesPodOperator, Kubeflow pipeline), so they schedule alike."""
    if step in GPU_STEPS:
        return {"cpu": "4", "memory": "32Gi"}, {"cpu": "8", "memory": "48Gi", GPU_RESOURCE: "1"}
    return {"cpu": "1", "memory": "4Gi"}, {"cpu": "2", "memory": "8Gi"}


POD_LAUNCH = 'mkdir -p "$1" && cd "$1" && shift && exec env "$@"'
"""The fixed shell text of :func:`pod_argv`: every value is a positional argument, never spliced in."""


def pod_argv(run_dir: str, env: Mapping[str, str], argv: list[str]) -> list[str]:
    """A container command that runs ``argv`` inside ``run_dir`` (created first) with ``env`` set.

    Pods have no "create this folder and work in it" setting, and Kubeflow hands runtime values
    (the MLflow URI, the parent run id, the files its outputs are read from) to a container only
    as command arguments, never as environment: so the folder and every variable travel as
    arguments of one fixed script, ``sh -c POD_LAUNCH hemo-launch <run_dir> NAME=value... hemo ...``,
    which ends in ``exec env NAME=value... hemo <step> ...``. Values are never parsed by the
    shell, whatever characters they hold."""
    return ["sh", "-c", POD_LAUNCH, "hemo-launch", str(run_dir), *(f"{k}={v}" for k, v in env.items()), *argv]


SAFE_LOADING_ENV = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false", "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}
"""Set for every step, whatever its image: models are data, and torch.load refuses pickled code
even where a caller forgot weights_only=True (a second wall behind the code's own checks)."""


def step_env(settings: StepSettings) -> dict[str, str]:
    """The environment of a step (names and paths only, never a credential: see ``step_secrets``)."""
    env = {"MLFLOW_TRACKING_URI": settings.mlflow_uri, "HEMO_DAG_RUN_ID": settings.dag_run_id,
           "HEMO_PROJECT_DIR": str(settings.project_dir), "PYTHONUNBUFFERED": "1",
           **settings.extra_env, **SAFE_LOADING_ENV}
    if settings.parent_run_id:
        env["HEMO_PARENT_RUN_ID"] = settings.parent_run_id
    return env


class StepFailed(RuntimeError):
    def __init__(self, step: str, code: int | None, tail: str) -> None:
        super().__init__(f"hemo {step} exited with code {code}:\n{tail}")
        self.code = code
        self.user_error = code in USER_ERROR_CODES


def prepare_run_dir(settings: StepSettings) -> Path:
    """Create the run folder before any container starts (so the Docker daemon does not create
    it as root) and hand it to the uid/gid the containers run as."""
    (settings.run_dir / RESULTS_DIR).mkdir(parents=True, exist_ok=True)
    uid, gid = settings.container_user()
    if os.getuid() == 0 and (uid, gid) != (0, 0):
        for path in [settings.run_dir, *settings.run_dir.rglob("*")]:
            os.chown(path, uid, gid, follow_symlinks=False)
    return settings.run_dir


def run_local(step: str, settings: StepSettings, hemo_bin: str | None = None,
              extra_args: tuple[str, ...] | list[str] = ()) -> dict[str, Any] | None:
    """Run `hemo <step>` in the project venv with the run folder as working folder; stream its
    output into the task log; return the step's result (hemo_pipeline.services.results) or None."""
    hemo = hemo_bin or os.environ.get("HEMO_BIN") or str(Path(sys.executable).with_name("hemo"))
    run_dir = prepare_run_dir(settings)
    argv = [hemo, *command(step, settings), *extra_args]
    result_file = run_dir / RESULTS_DIR / f"{result_name(step, argv)}.json"
    result_file.unlink(missing_ok=True)
    print("running:", " ".join(argv), f"(cwd {run_dir})", flush=True)
    env = {**os.environ, **step_env(settings), "HEMO_RESULT_FILE": str(result_file)}
    process = subprocess.Popen(argv, cwd=run_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        print(line, end="", flush=True)
        lines.append(line.rstrip("\n"))
    code = process.wait()
    if code != 0:
        raise StepFailed(step, code, "\n".join(lines[-20:]))
    return json.loads(result_file.read_text()) if result_file.is_file() else None


def in_container(settings: StepSettings) -> StepSettings:
    """The same settings with paths as the container sees them (project and runs mounted)."""
    return dataclasses.replace(settings, project_dir=Path(CONTAINER_PROJECT),
                               run_dir=Path(CONTAINER_RUNS) / settings.run_dir.name)


def secrets_env(settings: StepSettings) -> dict[str, str]:
    """HEMO_SECRETS_FILE for a container with its step secrets volume mounted: a path, never a value."""
    return {"HEMO_SECRETS_FILE": f"{CONTAINER_SECRETS}/{STEP_SECRETS_FILE}"} if settings.step_secrets else {}


def exit_code_of(error: BaseException) -> int | None:
    """The step's exit code from a container/pod failure message, if the operator reports it."""
    match = re.search(r"['\"]?(?:StatusCode|exit_code)['\"]?\s*[:=]\s*(\d+)", str(error))
    return int(match.group(1)) if match else None


def docker_operator(task_id: str, step: str, settings: StepSettings, docker_url: str | None = None) -> Any:
    """DockerOperator for a step: the training image, all GPUs for GPU steps, 16 GB shm (the
    DataLoader's workers share batches through /dev/shm), project and runs folders mounted, the
    step secrets volume mounted read-only (its path in HEMO_SECRETS_FILE, no value in the
    container's configuration), the container's uid/gid set, and the step's JSON result
    retrieved from the container as XCom."""
    from airflow.providers.docker.operators.docker import DockerOperator
    from docker.types import DeviceRequest, Mount

    class JsonResultDockerOperator(DockerOperator):
        pickling_library = json  # the retrieved result file is JSON, never unpickled

    inner = in_container(settings)
    uid, gid = settings.container_user()
    # HEMO_DOCKER_GPUS=none: a host without NVIDIA's container toolkit (no GPU request, one process)
    gpus = os.environ.get("HEMO_DOCKER_GPUS", "all")
    gpu = step in GPU_STEPS and gpus != "none"
    # train/refine use every GPU of the host: one DDP process per GPU (HEMO_DOCKER_PROCESSES: a count,
    # or "gpu" = as many as the container sees); the image's entrypoint is plain `hemo` otherwise
    processes = os.environ.get("HEMO_DOCKER_PROCESSES", "gpu" if gpus != "none" else "1")
    entrypoint = torchrun_entrypoint(processes) if step in DATA_PARALLEL_STEPS else None
    mounts = [
        Mount(target=CONTAINER_PROJECT, source=str(settings.project_dir), type="bind", read_only=True),
        Mount(target=CONTAINER_RUNS, source=str(settings.run_dir.parent), type="bind"),
    ]
    if settings.step_secrets:  # a named volume filled by the stack's secrets-init service
        mounts.append(Mount(target=CONTAINER_SECRETS, source=settings.step_secrets, type="volume", read_only=True))
    return JsonResultDockerOperator(
        task_id=task_id,
        image=settings.image,
        entrypoint=entrypoint,
        command=command(step, settings, Path(CONTAINER_PROJECT)),
        working_dir=str(inner.run_dir),
        environment={**step_env(inner), **secrets_env(settings), "HEMO_RESULT_FILE": CONTAINER_RESULT},
        user=f"{uid}:{gid}",
        mounts=mounts,
        device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpu else None,
        shm_size=16 * 1024**3 if gpu else None,
        docker_url=docker_url or os.environ.get("DOCKER_HOST", "unix://var/run/docker.sock"),
        network_mode=os.environ.get("HEMO_DOCKER_NETWORK", "bridge"),
        auto_remove="success",
        mount_tmp_dir=False,
        tty=False,
        retrieve_output=True,
        retrieve_output_path=CONTAINER_RESULT,
    )


def kubernetes_operator(task_id: str, step: str, settings: StepSettings, namespace: str | None = None,
                        pvc: str = "hemo-data") -> Any:
    """KubernetesPodOperator for a step: `nvidia.com/gpu: 1` limits for GPU steps only, the
    project and runs on a shared PVC, a memory-backed /dev/shm for the DataLoader, the MLflow
    login from the Kubernetes Secret ``step_secrets`` (envFrom), the pod's uid/gid/fsGroup set,
    and the step's result pushed through /airflow/xcom/return.json."""
    from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
    from kubernetes.client import models as k8s

    inner = in_container(settings)
    container_run_dir = str(inner.run_dir)
    uid, gid = settings.container_user()
    gpu = step in GPU_STEPS
    requests, limits = pod_resources(step)
    volumes = [
        k8s.V1Volume(name="hemo", persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=pvc)),
        k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory", size_limit="16Gi")),
    ]
    mounts = [
        k8s.V1VolumeMount(name="hemo", mount_path=CONTAINER_PROJECT, sub_path="project"),
        k8s.V1VolumeMount(name="hemo", mount_path=CONTAINER_RUNS, sub_path="runs"),
        k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"),
    ]
    # The credentials come from a Kubernetes Secret (keys MLFLOW_TRACKING_USERNAME/PASSWORD, made
    # from the same hemo-step.env: kubectl create secret generic hemo-step --from-env-file=...):
    # the pod spec holds its name only, never a value.
    secret_env = ([k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=settings.step_secrets))]
                  if settings.step_secrets else None)
    return KubernetesPodOperator(
        task_id=task_id,
        name=f"hemo-{step}",
        namespace=namespace or os.environ.get("HEMO_K8S_NAMESPACE", "hemo"),
        image=settings.image,
        # Pods have no working-dir setting: create the run folder and cd into it, then exec hemo.
        cmds=["sh", "-c"],
        arguments=[f"mkdir -p {shlex.quote(container_run_dir)} && cd {shlex.quote(container_run_dir)} && exec "
                   + shlex.join(["hemo", *command(step, settings, Path(CONTAINER_PROJECT))])],
        env_vars={**step_env(inner), "HEMO_RESULT_FILE": POD_RESULT},
        env_from=secret_env,
        container_resources=k8s.V1ResourceRequirements(limits=limits, requests=requests),
        volumes=volumes,
        volume_mounts=mounts,
        security_context=k8s.V1PodSecurityContext(run_as_user=uid, run_as_group=gid, fs_group=gid),
        tolerations=[k8s.V1Toleration(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule")] if gpu else None,
        do_xcom_push=True,
        deferrable=False,
        get_logs=True,
        on_finish_action="delete_succeeded_pod",
    )
