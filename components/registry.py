"""The model registry: the hand-off between training and serving.

* Every model is ``pt2`` (torch.export), CPU weights, with what is needed to use it in its
  metadata: image size, context weights, thresholds for context and single-slice scoring, and the
  provenance of its training patients (split salt and fractions, a digest of the patient list; the
  list itself is an artifact of the run that registered it).
* Aliases: ``@challenger`` (the last version `evaluate` registered), ``@champion`` (what `score`
  serves), ``@previous`` (the champion it replaced, so rollback is one command).
* An alias is resolved to a version once; the model is then loaded by that version, so a
  promotion in between can never pair one version's weights with another's thresholds.
* Models are data, never code: a version loads only if its MLmodel says pytorch/pt2 with no code
  folder, checked before anything is deserialised, with MLflow's pickle loading switched off.

Run tracking (the run tree, tags, figures) lives in :mod:`components.tracking`.
"""

from __future__ import annotations

import getpass
import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from components.errors import TransientError, UserError

MODEL_NAME = "hemorrhage-classifier"
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
TRAIN_PATIENTS_ARTIFACT = "provenance/train_patients.json"


class AliasMoved(TransientError):
    """The alias changed between our read and our write: someone else promoted meanwhile."""


@dataclass
class LoadedModel:
    """A per-slice model plus what is needed to use it as served."""

    module: Any
    image_size: int
    context_weights: list[float]
    thresholds: list[float]
    thresholds_single: list[float]
    source: str
    version: str | None = None
    config: Any = None  # the ModelConfig, for local checkpoints
    metadata: dict[str, Any] = field(default_factory=dict)
    context: str = "filter"
    """``filter`` (per-slice module + the 5-tap filter) or a learned head (``conv1d``/``bigru``:
    the module reads a whole sequence and returns per-slice and context logits)."""
    input: str = "gray"
    """``gray`` or ``windows3`` (three CT windows as the channels)."""

    @property
    def channels(self) -> int:
        return 3 if self.input == "windows3" else 1

    def thresholds_for(self, context: int) -> list[float]:
        """The thresholds tuned for this scoring mode (context logits are scaled differently)."""
        return list(self.thresholds if context > 1 else self.thresholds_single)

    def weights_for(self, context: int) -> list[float]:
        return list(self.context_weights) if context > 1 else [1.0]

    @property
    def label(self) -> str:
        return f"v{self.version}" if self.version else self.source


def version_uri(version: str) -> str:
    return f"models:/{MODEL_NAME}/{version}"


def client() -> Any:
    import mlflow

    from components import tracking

    tracking.configure()
    return mlflow.MlflowClient()


def alias_version(alias: str) -> str | None:
    """Version number behind ``alias``, or None when the alias (or the model) does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


def require_version(version: str) -> Any:
    from mlflow.exceptions import MlflowException

    from components import tracking

    try:
        return client().get_model_version(MODEL_NAME, str(version))
    except MlflowException as exc:
        raise UserError(f"{MODEL_NAME} has no version {version} at {tracking.tracking_uri()}; "
                        "list versions in the MLflow UI (Models)") from exc


def resolve(uri: str) -> tuple[str, str | None]:
    """``models:/name@alias`` -> (``models:/name/N``, N), resolved once; version URIs pass through."""
    from components import tracking

    if uri.startswith("models:/") and "@" in uri:
        name, alias = uri[len("models:/"):].rsplit("@", 1)
        if name != MODEL_NAME:
            raise UserError(f"{uri}: this project registers '{MODEL_NAME}'; use models:/{MODEL_NAME}@{alias}")
        version = alias_version(alias)
        if version is None:
            raise UserError(f"no model version has alias '{alias}' in registry '{MODEL_NAME}' at "
                            f"{tracking.tracking_uri()}; run the pipeline (make run) or `hemo promote --version N`")
        return version_uri(version), version
    if uri.startswith("models:/"):
        name, _, version = uri[len("models:/"):].partition("/")
        if name != MODEL_NAME or not version.isdigit():
            raise UserError(f"{uri}: use models:/{MODEL_NAME}/<version> or models:/{MODEL_NAME}@<alias>")
        return uri, version
    return uri, None


def log_and_register(model: Any, config: Any, provenance: dict[str, Any], metrics: dict[str, float] | None = None) -> str:
    """Log ``model`` (CPU, pt2) to the active run, register it, record its provenance and point
    ``@challenger`` at it; return the new version."""
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from hemo_model import CLASSES

    model = model.to("cpu").eval()
    learned = config.context != "filter"
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), name="slices")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, len(CLASSES) * (2 if learned else 1)), name="logits")]),
    )
    # Spatial dims are dynamic (metadata says the trained size); a learned context reads one
    # whole sequence, so its example is a short sequence rather than a batch. pt2 needs the example
    # to trace the graph; MLflow's serving check of it is skipped (pyfunc refuses the pt2 flavour's
    # input, a warning in every evaluate log, and it would load the model once more for nothing).
    example = torch.zeros(8 if learned else 2, 3, 64, 64).numpy()
    metadata = {
        "image_size": int(config.image_size),
        "context_weights": [float(w) for w in config.context_weights],
        "thresholds": [float(t) for t in config.thresholds],
        "thresholds_single": [float(t) for t in config.thresholds_single],
        "classes": list(CLASSES),
        "head": config.head,
        "context": config.context,
        "input": config.input,
        "split": provenance["split"],
        "train_patients_sha256": provenance["train_patients_sha256"],
        "output": ("one sequence in: per-slice logits then context logits (S, 10); sigmoid" if learned else
                   "per-slice logits; apply the context filter along the sequence, then sigmoid"),
    }
    mlflow.log_dict({"train_patients": provenance["train_patients"]}, TRAIN_PATIENTS_ARTIFACT)
    info = mlflow.pytorch.log_model(
        model, name="model", serialization_format="pt2", signature=signature, input_example=example,
        validate_serving_input=False, metadata=metadata, registered_model_name=MODEL_NAME, await_registration_for=60,
        # Stated, not inferred: inference loads the model in a subprocess (seconds per version).
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}"],
    )
    version = str(info.registered_model_version)
    run_id = mlflow.active_run().info.run_id
    tags = {
        "hemo.split.salt": provenance["split"]["salt"],
        "hemo.split.val_fraction": str(provenance["split"]["val_fraction"]),
        "hemo.split.gate_fraction": str(provenance["split"]["gate_fraction"]),
        "hemo.train_patients.sha256": provenance["train_patients_sha256"],
        "hemo.train_patients.count": str(len(provenance["train_patients"])),
        "hemo.train_patients.artifact": f"runs:/{run_id}/{TRAIN_PATIENTS_ARTIFACT}",
    }
    for key in ("micro_f2_context", "micro_f2_single"):
        if metrics and key in metrics:
            tags[key] = f"{metrics[key]:.4f}"
    tag_version(version, tags)
    client().set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    return version


def tag_version(version: str, tags: dict[str, str]) -> None:
    mlflow_client = client()
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(MODEL_NAME, str(version), key, str(value)[:5000])


def train_patients(version: str) -> list[str]:
    """The training patients a version recorded, checked against its digest tag."""
    import mlflow

    from hemo_model.roles import patients_digest

    info = require_version(version)
    tags = info.tags or {}
    uri, digest = tags.get("hemo.train_patients.artifact"), tags.get("hemo.train_patients.sha256")
    if not uri or not digest:
        raise UserError(f"{MODEL_NAME} v{version} records no training patients (registered by hand or by an older "
                        "release), so no fair comparison is possible; retrain it, or promote by hand with "
                        "`hemo promote --version N --reason ...`")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp)
        patients = list(json.loads(Path(local).read_text())["train_patients"])
    if patients_digest(patients) != digest:
        raise UserError(f"{MODEL_NAME} v{version}: its training-patient list does not match the digest it was "
                        "registered with; the artifact was changed, do not promote this version")
    return patients


# --- loading ---------------------------------------------------------------------------------


def load_model(uri_or_path: str) -> LoadedModel:
    """A registry URI (``models:/name@alias`` or ``models:/name/N``, resolved to a version once)
    or a local checkpoint of `hemo train`/`refine`."""
    if "://" not in uri_or_path and not uri_or_path.startswith("models:"):
        return _load_checkpoint(Path(uri_or_path))
    if not uri_or_path.startswith("models:/"):
        raise UserError(f"{uri_or_path}: load models from the registry (models:/{MODEL_NAME}/N or @alias) or a "
                        "local .pt checkpoint")
    uri, version = resolve(uri_or_path)
    assert version is not None
    return load_version(version)


def load_version(version: str) -> LoadedModel:
    """Download version ``version``, check that it is pt2 with no code, then load it."""
    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    from components import tracking

    require_version(version)
    uri = version_uri(version)
    with tempfile.TemporaryDirectory(prefix="hemo-model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))
        except MlflowException as exc:
            raise UserError(f"cannot download {uri} from {tracking.tracking_uri()}: {exc.message}") from exc
        mlmodel = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
        check_pt2(mlmodel, local, f"{MODEL_NAME} v{version}")
        os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
        try:
            module = mlflow.pytorch.load_model(str(local), map_location="cpu")
        except MlflowException as exc:
            raise UserError(f"cannot load {MODEL_NAME} v{version}: {exc.message}") from exc
    meta = mlmodel.get("metadata") or {}
    thresholds = list(meta.get("thresholds", [0.5] * 5))
    return LoadedModel(module, int(meta.get("image_size", 512)), list(meta.get("context_weights", [1.0])),
                       thresholds, list(meta.get("thresholds_single", thresholds)), uri, version, metadata=meta,
                       context=str(meta.get("context", "filter")), input=str(meta.get("input", "gray")))


def check_pt2(mlmodel: dict[str, Any], local: Path, label: str) -> None:
    """Refuse anything but a pytorch flavor in pt2 format without a code folder: pickle-format
    models and code folders run code when loaded."""
    flavor = (mlmodel.get("flavors") or {}).get("pytorch")
    fix = ("re-log it with mlflow.pytorch.log_model(..., serialization_format=\"pt2\") (what `hemo evaluate` does) "
           "and register that version")
    if not flavor:
        raise UserError(f"{label} is not a PyTorch model (no pytorch flavor in its MLmodel); {fix}")
    data = local / str(flavor.get("model_data", "data"))
    if flavor.get("code") or not (data / "model.pt2").is_file() or (data / "model.pth").exists():
        raise UserError(f"{label} is not in pt2 format (pickle or code folder: loading it would run code), "
                        f"refused; {fix}")


def _load_checkpoint(path: Path) -> LoadedModel:
    from hemo_model.model import CheckpointError, load_checkpoint

    if not path.is_file():
        raise UserError(f"model checkpoint {path} does not exist; pass a models:/ URI or an existing .pt file")
    try:
        module, config, payload = load_checkpoint(path)
    except CheckpointError as exc:
        raise UserError(f"cannot use checkpoint {path}: {exc}; re-create it with `hemo train`/`refine` or pass "
                        "another --model") from exc
    loaded = LoadedModel(module, config.image_size, list(config.context_weights), list(config.thresholds),
                         list(config.thresholds_single), str(path), config=config, context=config.context,
                         input=config.input)
    loaded.metadata = {"provenance": payload.get("provenance")}
    return loaded


# --- aliases ---------------------------------------------------------------------------------


def who() -> str:
    """The person (or service account) behind a manual registry change: HEMO_USER, else the login."""
    try:
        return os.environ.get("HEMO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def move_champion(version: str, expected: str | None, how: str, reason: str) -> str | None:
    """Point ``@champion`` at ``version`` if it still points at ``expected`` (compare-and-set:
    re-read just before writing), keep the replaced one as ``@previous``, and tag both versions
    with who/when/why. Returns the replaced version. Raises :class:`AliasMoved` if the champion
    changed meanwhile; then nothing is changed."""
    current = alias_version(CHAMPION)
    if current != expected:
        raise AliasMoved(f"@{CHAMPION} moved from {_v(expected)} to {_v(current)} while this step ran; nothing was "
                         "changed: run the gate again to compare against the new champion")
    mlflow_client = client()
    if current is not None and current != version:
        mlflow_client.set_registered_model_alias(MODEL_NAME, PREVIOUS, current)
        tag_version(current, {"champion.replaced_by": version, "champion.replaced_at": now()})
    mlflow_client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    tag_version(version, {"champion.how": how, "champion.by": who(), "champion.at": now(),
                          "champion.reason": reason, "champion.replaced": current or "none"})
    return current


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"
