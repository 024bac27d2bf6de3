"""MLflow plumbing shared by every step: where to log, the run tree, tags, models, registry.

* Tracking URI: ``MLFLOW_TRACKING_URI`` if set (a tracking server), else embedded
  ``sqlite:///mlflow.db`` with artifacts under ``./mlartifacts``.
* Run tree: one parent run per pipeline run; each step is a child run. The parent comes from
  ``HEMO_PARENT_RUN_ID`` (Airflow passes it between tasks) or from ``outputs/pipeline_run.json``
  (written by ``hemo train`` for the DVC stages that follow it).
* Every run is tagged with the git commit, the ``data.dvc`` md5 and the params hash (and the
  Airflow DAG run id when ``HEMO_DAG_RUN_ID`` is set), so any model can be traced to its inputs.
* The registry is the hand-off between training and serving: models are ``pt2`` (torch.export;
  no pickle on load), CPU weights, with image size, context weights and thresholds as metadata.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components.errors import UserError
from components.files import write_json_atomic
from components.params import params_hash

MODEL_NAME = "hemorrhage-classifier"
CHAMPION = "champion"
CHALLENGER = "challenger"
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
    import mlflow

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


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def data_md5(dvc_file: Path = Path("data.dvc")) -> str:
    import yaml

    try:
        outs = yaml.safe_load(dvc_file.read_text()).get("outs", [])
        return str(outs[0].get("md5", "unknown"))
    except (OSError, AttributeError, IndexError, TypeError, yaml.YAMLError):
        return "unknown"


def standard_tags(step: str, params: dict[str, Any]) -> dict[str, str]:
    tags = {
        "hemo.step": step,
        "mlflow.source.git.commit": git_commit(),
        "hemo.data_md5": data_md5(),
        "hemo.params_hash": params_hash(params),
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


def start_pipeline_run(params: dict[str, Any]) -> str:
    """Create the parent run of a pipeline run (unless one is given) and record its id."""
    import mlflow

    run_id = os.environ.get("HEMO_PARENT_RUN_ID")
    if not run_id:
        run = mlflow.MlflowClient().create_run(
            mlflow.get_experiment_by_name(DEFAULT_EXPERIMENT).experiment_id,
            tags={**standard_tags("pipeline", params), "mlflow.runName": "pipeline"},
        )
        run_id = run.info.run_id
    write_json_atomic(PIPELINE_RUN_FILE, {"run_id": run_id, "tracking_uri": tracking_uri()})
    return run_id


@contextlib.contextmanager
def step_run(step: str, params: dict[str, Any], parent: str | None = None) -> Iterator[Any]:
    """A child run of the pipeline run for one step (a top-level run if there is no parent)."""
    import mlflow

    from mlflow.exceptions import MlflowException

    configure()
    parent = parent or parent_run_id()
    if parent is not None:
        try:
            mlflow.MlflowClient().get_run(parent)
        except MlflowException:
            logging.getLogger(__name__).warning(
                "parent run %s not found at %s; logging %s as a top-level run", parent, tracking_uri(), step)
            parent = None
    with mlflow.start_run(run_name=step, parent_run_id=parent, tags=standard_tags(step, params)) as run:
        yield run


def log_params_flat(params: dict[str, Any], prefix: str = "") -> None:
    import mlflow

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
    import mlflow

    mlflow.log_figure(figure, f"plots/{name}")
    plt.close(figure)


# --- models and the registry -------------------------------------------------------------


def log_and_register(model: Any, config: Any, metrics: dict[str, float] | None = None) -> str:
    """Log ``model`` (CPU, pt2) to the active run and register it; return the new version."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from hemo_model import CLASSES

    model = model.to("cpu").eval()
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), name="slices")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(CLASSES)), name="logits")]),
    )
    example = torch.zeros(2, 3, 64, 64).numpy()  # spatial dims are dynamic; metadata says the trained size
    metadata = {
        "image_size": int(config.image_size),
        "context_weights": [float(w) for w in config.context_weights],
        "thresholds": [float(t) for t in config.thresholds],
        "classes": list(CLASSES),
        "head": config.head,
        "output": "per-slice logits; apply the context filter along the sequence, then sigmoid",
    }
    info = mlflow.pytorch.log_model(
        model, name="model", serialization_format="pt2", signature=signature, input_example=example,
        metadata=metadata, registered_model_name=MODEL_NAME, await_registration_for=60,
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    if metrics:
        for key in ("micro_f2_context", "micro_f2_single"):
            if key in metrics:
                client.set_model_version_tag(MODEL_NAME, version, key, f"{metrics[key]:.4f}")
    return version


def alias_version(alias: str) -> str | None:
    """Version number behind ``alias``, or None when the alias (or the model) does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


class LoadedModel:
    """A per-slice model plus what is needed to use it: size, context weights, thresholds."""

    def __init__(self, module: Any, image_size: int, context_weights: list[float], thresholds: list[float],
                 source: str, version: str | None = None, config: Any = None) -> None:
        self.module = module
        self.config = config  # the ModelConfig, for local checkpoints
        self.image_size = image_size
        self.context_weights = context_weights
        self.thresholds = thresholds
        self.source = source
        self.version = version


def load_model(uri_or_path: str) -> LoadedModel:
    """Load a registry/run URI (``models:/name@alias``, ``runs:/...``) or a local checkpoint."""
    path = Path(uri_or_path)
    if "://" not in uri_or_path and not uri_or_path.startswith("models:"):
        if not path.is_file():
            raise UserError(f"model checkpoint {path} does not exist; pass a models:/ URI or an existing .pt file")
        from hemo_model.model import load_checkpoint

        try:
            module, config, _ = load_checkpoint(path)
        except Exception as exc:  # torch raises many types for truncated/foreign files
            first_line = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            raise UserError(f"cannot read checkpoint {path} ({type(exc).__name__}: {first_line}); it is truncated or "
                            "not written by hemo train/refine: re-create it or pass another --model") from exc
        return LoadedModel(module, config.image_size, list(config.context_weights), list(config.thresholds), str(path),
                           config=config)

    import mlflow
    from mlflow.exceptions import MlflowException

    configure()
    version = None
    try:
        if uri_or_path.startswith("models:/") and "@" in uri_or_path:
            alias = uri_or_path.rsplit("@", 1)[1]
            version = alias_version(alias)
            if version is None:
                raise UserError(f"no model version has alias '{alias}' in registry '{MODEL_NAME}' at "
                                f"{tracking_uri()}; run the pipeline (make run) or set the alias in the MLflow UI")
        info = mlflow.models.get_model_info(uri_or_path)
        module = mlflow.pytorch.load_model(uri_or_path, map_location="cpu")
    except MlflowException as exc:
        raise UserError(f"cannot load model {uri_or_path} from {tracking_uri()}: {exc.message}") from exc
    meta = info.metadata or {}
    return LoadedModel(module, int(meta.get("image_size", 512)), list(meta.get("context_weights", [1.0])),
                       list(meta.get("thresholds", [0.5] * 5)), uri_or_path, version)
