"""MLflow run tracking shared by every step: where to log, the run tree, tags, figures.

* Tracking URI: ``MLFLOW_TRACKING_URI`` if set (a tracking server), else embedded
  ``sqlite:///mlflow.db`` with artifacts under ``./mlartifacts``.
* Run tree: one parent run per pipeline run; each step is a child run. The parent comes from
  ``HEMO_PARENT_RUN_ID`` (Airflow passes it between tasks) or from ``outputs/pipeline_run.json``
  (written by ``hemo train`` for the DVC stages that follow it).
* Every run is tagged with the git commit, the ``data.dvc`` md5 and the params hash (and the
  Airflow DAG run id when ``HEMO_DAG_RUN_ID`` is set), so any model can be traced to its inputs.

Registry code (model versions, aliases, loading) lives apart, in :mod:`hemo_pipeline.services.registry`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow.exceptions import MlflowException

from hemo_pipeline.services.files import write_json_atomic

DEFAULT_EXPERIMENT = "hemorrhage-classifier"
PIPELINE_RUN_FILE = Path("outputs/pipeline_run.json")
EMBEDDED_DB = "mlflow.db"


def is_embedded() -> bool:
    return not os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri() -> str:
    """The server from MLFLOW_TRACKING_URI, else ./mlflow.db as an absolute sqlite URI (absolute
    so that MLflow's per-URI store cache can never mix up two working folders)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(EMBEDDED_DB).resolve()}"


def configure(experiment: str = DEFAULT_EXPERIMENT) -> str:
    """Point MLflow at the server or the embedded store and select the experiment."""
    # MLflow/alembic announce schema creation at INFO on stderr; a CLI user only needs warnings.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        artifact_location = None
        if is_embedded():  # keep embedded artifacts in a predictable folder next to mlflow.db
            artifact_location = Path("mlartifacts").resolve().as_uri()
        with contextlib.suppress(Exception):  # a concurrent step may have created it meanwhile
            mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment)
    return uri


def unreachable(exc: BaseException) -> str | None:
    """One line for a tracking server that did not answer (after MLflow's retries), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        markers = ("Max retries exceeded", "Connection refused", "Failed to establish a new connection",
                   "Read timed out", "ConnectionError", "Connection aborted", "RemoteDisconnected")
        if any(m in text for m in markers) and type(current).__name__ in (
                "MlflowException", "ConnectionError", "MaxRetryError", "RestException", "ReadTimeout",
                "ConnectTimeout", "NewConnectionError", "ProtocolError"):
            retries = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "?")
            return (f"MLflow tracking server {tracking_uri()} did not answer ({retries} retries with back-off): check "
                    "that it runs and MLFLOW_TRACKING_URI, then re-run the step (training resumes from its last "
                    "checkpoint)")
        current = current.__cause__ or current.__context__
    return None


def project_dir() -> Path:
    """The project (data.dvc, .git): HEMO_PROJECT_DIR, else the working folder. Orchestrators run
    steps in per-run folders, so lineage must not depend on the working folder."""
    return Path(os.environ.get("HEMO_PROJECT_DIR") or ".")


def git_commit() -> str:
    """HEMO_GIT_COMMIT (baked into images at build time), else the project's git HEAD."""
    if os.environ.get("HEMO_GIT_COMMIT"):
        return os.environ["HEMO_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(project_dir()), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_md5(dvc_file: Path | None = None) -> str:
    """The md5 of the data version recorded in the project's data.dvc."""
    try:
        outs = yaml.safe_load((dvc_file or project_dir() / "data.dvc").read_text()).get("outs", [])
        return str(outs[0].get("md5", "unknown"))
    except (OSError, AttributeError, IndexError, TypeError, yaml.YAMLError):
        return "unknown"


def standard_tags(step: str, settings: Any) -> dict[str, str]:
    tags = {
        "hemo.step": step,
        "mlflow.source.git.commit": git_commit(),
        "hemo.data_md5": data_md5(),
        "hemo.params_hash": settings.hash(),
    }
    if os.environ.get("HEMO_DAG_RUN_ID"):
        tags["airflow.dag_run_id"] = os.environ["HEMO_DAG_RUN_ID"]
    return tags


def parent_run_id() -> str | None:
    """HEMO_PARENT_RUN_ID, else the run recorded by `hemo train` in outputs/pipeline_run.json,
    but only if it was recorded against the tracking store in use now."""
    if os.environ.get("HEMO_PARENT_RUN_ID"):
        return os.environ["HEMO_PARENT_RUN_ID"]
    if PIPELINE_RUN_FILE.is_file():
        try:
            recorded = json.loads(PIPELINE_RUN_FILE.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if recorded.get("tracking_uri") == tracking_uri():
            return recorded.get("run_id")
    return None


def run_status(run_id: str) -> str | None:
    """RUNNING / FINISHED / FAILED / KILLED, or None if the run does not exist in this store."""
    try:
        return str(mlflow.MlflowClient().get_run(run_id).info.status)
    except MlflowException:
        return None


def end_run(run_id: str, status: str, reason: str | None = None) -> bool:
    """End a run that is still RUNNING (a no-op for one that ended); True if it was ended now."""
    if run_status(run_id) != "RUNNING":
        return False
    client = mlflow.MlflowClient()
    if reason:
        client.set_tag(run_id, "hemo.end_reason", reason[:5000])
    client.set_terminated(run_id, status=status)
    return True


def start_pipeline_run(settings: Any, resume: bool = False) -> str:
    """The parent run of a pipeline run: HEMO_PARENT_RUN_ID (an orchestrator made it), the one
    recorded in outputs/pipeline_run.json when ``resume`` continues an interrupted pipeline, or a
    new one. A recorded parent that is still RUNNING and not resumed is ended FAILED: its pipeline
    never reached its last step."""
    run_id = os.environ.get("HEMO_PARENT_RUN_ID")
    if not run_id:
        recorded = parent_run_id()
        if recorded and resume and run_status(recorded) == "RUNNING":
            run_id = recorded
        else:
            if recorded:
                end_run(recorded, "FAILED", "a new pipeline run started before this one reached its last step")
            experiment = mlflow.get_experiment_by_name(DEFAULT_EXPERIMENT)
            if experiment is None:  # configure() creates it; another client may have deleted it since
                raise RuntimeError(f"MLflow experiment {DEFAULT_EXPERIMENT!r} does not exist at {tracking_uri()}")
            run = mlflow.MlflowClient().create_run(
                experiment.experiment_id,
                tags={**standard_tags("pipeline", settings), "mlflow.runName": "pipeline"},
            )
            run_id = run.info.run_id
    write_json_atomic(PIPELINE_RUN_FILE, {"run_id": run_id, "tracking_uri": tracking_uri()})
    return run_id


RUN_MARKERS = Path(".hemo-runs")
"""One file per step while its MLflow run is open: a marker left behind means the process died
(SIGKILL, OOM, a lost node), and the next start of that step closes or resumes the orphaned run."""


def _marker(step: str) -> Path:
    return RUN_MARKERS / f"{re.sub(r'[^A-Za-z0-9._-]', '_', step)}.json"


def orphaned_run(step: str) -> str | None:
    """The run of an earlier start of ``step`` whose process died with the run still RUNNING."""
    marker = _marker(step)
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if recorded.get("tracking_uri") != tracking_uri():
        return None
    run_id = recorded.get("run_id")
    return run_id if run_id and run_status(run_id) == "RUNNING" else None


@contextlib.contextmanager
def step_run(step: str, settings: Any, parent: str | None = None, resume: bool = False) -> Iterator[Any]:
    """A child run of the pipeline run for one step (a top-level run if there is no parent).

    If an earlier start of this step died with its run open, that run is ended FAILED, or, with
    ``resume``, continued (its metric history goes on where it stopped)."""
    configure()
    parent = parent or parent_run_id()
    if parent is not None and run_status(parent) is None:
        logging.getLogger(__name__).warning(
            "parent run %s not found at %s; logging %s as a top-level run", parent, tracking_uri(), step)
        parent = None
    orphan = orphaned_run(step)
    if orphan and resume:
        context = mlflow.start_run(run_id=orphan)
    else:
        if orphan:
            end_run(orphan, "FAILED", f"the process of `hemo {step}` died; found by the next start of the step")
        # a step started inside another step's active run in this process (`hemo ablate`'s variants)
        # nests under it; MLflow refuses a second top-level fluent run
        active = mlflow.active_run()
        nested = active is not None and parent == active.info.run_id
        context = mlflow.start_run(run_name=step, parent_run_id=parent, nested=nested,
                                   tags=standard_tags(step, settings))
    with context as run:
        write_json_atomic(_marker(step), {"run_id": run.info.run_id, "tracking_uri": tracking_uri(),
                                           "pid": os.getpid(), "host": socket.gethostname()})
        try:
            yield run
        finally:
            _marker(step).unlink(missing_ok=True)


def log_params_flat(params: dict[str, Any], prefix: str = "") -> None:
    flat: dict[str, Any] = {}

    def walk(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for sub, inner in value.items():
                walk(inner, f"{key}.{sub}" if key else str(sub))
        else:
            flat[key] = value

    walk(params, prefix)
    mlflow.log_params({k: str(v)[:500] for k, v in flat.items()})


def log_figure(figure: Any, name: str) -> None:
    import matplotlib.pyplot as plt

    mlflow.log_figure(figure, f"plots/{name}")
    plt.close(figure)
