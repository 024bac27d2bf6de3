"""The model registry: the hand-off between training and serving.

* A registered version is data, never code: ``spec.json`` (the :class:`~hemo_model.model.spec.ModelSpec`:
  architecture, head, input, image size, context and its weights, thresholds, classes) and
  ``model.safetensors`` (raw tensors), logged as an MLflow LoggedModel by `hemo evaluate`. Loading
  downloads exactly those two files, checks their sha256 against the digests the registering run
  recorded as parameters (write-once in MLflow), rebuilds the network with :mod:`hemo_model` and
  fills it from the safetensors file. No pickle is read, whatever else the version's artifacts
  hold; a version in any other format (the pt2/pickle archives of earlier releases) is refused
  with one line that says how to register it again.
* Provenance (the split and the training patients) is read only from the version's own run
  (``runs:/<run_id>/provenance/...`` and its parameters); version tags are informative, never a URL
  to follow nor a digest to trust: anyone who can tag a version could forge them.
* Aliases: ``@challenger`` (the last version `evaluate` registered), ``@champion`` (what `score`
  serves), ``@previous`` (the champion it replaced, so rollback is one command), ``@reference``
  (set by hand with `hemo promote --reference`). ``@champion`` and ``@reference`` move only under
  the promotion lease (:mod:`hemo_pipeline.services.champion_lease`), and every move appends one
  entry to the alias history (registered-model tags ``hemo.alias_history.<seq>``).
* An alias is resolved to a version once; the model is then loaded by that version, so a
  promotion in between can never pair one version's weights with another's thresholds.

Run tracking (the run tree, tags, figures) lives in :mod:`hemo_pipeline.services.tracking`.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException

from hemo_model.data.roles import patients_digest
from hemo_model.model.storage import (
    SPEC_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    ModelFileError,
    load_checkpoint,
    read_model_folder,
    save_model_folder,
)
from hemo_pipeline.services import tracking
from hemo_pipeline.services.champion_lease import champion_lease, default_holder
from hemo_pipeline.services.champion_lease import holds as champion_lease_holds
from hemo_pipeline.services.errors import TransientError, UserError

MODEL_NAME = "hemorrhage-classifier"
CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"
REFERENCE = "reference"
"""The approved version a non-inferiority chain is measured against (its drift budget); set only
by `hemo promote --reference`, under the promotion lease."""
TRAIN_PATIENTS_ARTIFACT = "provenance/train_patients.json"
MODEL_TYPE = "hemo-safetensors"
"""The LoggedModel type of every version this release registers."""
PARAM_WEIGHTS = "registered.weights_sha256"
PARAM_SPEC = "registered.spec_sha256"
PARAM_TRAIN_DIGEST = "registered.train_patients_sha256"
PARAM_SPLIT = "registered.split"
PARAM_VAL_DIGEST = "registered.val_patients_sha256"
"""Versions registered before val patients were recorded lack it: their val list is unknown."""
PARAM_SERIES_DIGEST = "registered.series_sha256"
"""Digest of the pixel fingerprints of the train and val scans (:func:`series_digest`); versions
registered before fingerprints were recorded lack it."""
"""Parameters of the registering run: MLflow refuses to change a logged parameter, so these are
what a version's files and provenance are checked against."""


class AliasMoved(TransientError):
    """The alias changed between our read and our write: someone else promoted meanwhile."""


class LeaseBypassed(AliasMoved):
    """The alias was not what we wrote right after writing it: a writer ignored the lease."""


@dataclass
class LoadedModel:
    """A network rebuilt from its spec, plus where it came from. Everything about how it is
    served (image size, input, context and its weights, thresholds) is read from ``spec``."""

    module: Any
    spec: Any  # hemo_model.model.spec.ModelSpec
    source: str
    version: str | None = None
    provenance: dict[str, Any] | None = None
    """What it trained on (split, training patients), for local checkpoints; registered
    versions keep theirs in their run (:func:`train_patients`)."""

    @property
    def image_size(self) -> int:
        return int(self.spec.image_size)

    @property
    def input(self) -> str:
        return str(self.spec.input)

    @property
    def context(self) -> str:
        return str(self.spec.context)

    @property
    def context_weights(self) -> list[float]:
        return list(self.spec.context_weights)

    @property
    def channels(self) -> int:
        return int(self.spec.channels)

    def thresholds_for(self, context: int) -> list[float]:
        """The thresholds tuned for this scoring mode (context logits are scaled differently)."""
        return self.spec.thresholds_for(context)

    def weights_for(self, context: int) -> list[float]:
        return self.spec.weights_for(context)

    @property
    def label(self) -> str:
        return f"v{self.version}" if self.version else self.source


def version_uri(version: str) -> str:
    return f"models:/{MODEL_NAME}/{version}"


def client() -> Any:

    tracking.configure()
    return mlflow.MlflowClient()


def alias_version(alias: str) -> str | None:
    """Version number behind ``alias``, or None when the alias (or the model) does not exist."""
    try:
        return str(client().get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


def require_version(version: str) -> Any:

    try:
        return client().get_model_version(MODEL_NAME, str(version))
    except MlflowException as exc:
        raise UserError(f"{MODEL_NAME} has no version {version} at {tracking.tracking_uri()}; "
                        "list versions in the MLflow UI (Models)") from exc


def resolve(uri: str) -> tuple[str, str | None]:
    """``models:/name@alias`` -> (``models:/name/N``, N), resolved once; version URIs pass through."""
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
        if name != MODEL_NAME or not (version.isascii() and version.isdigit()):
            raise UserError(f"{uri}: use models:/{MODEL_NAME}/<version> or models:/{MODEL_NAME}@<alias>")
        return uri, version
    return uri, None


def log_and_register(model: Any, spec: Any, provenance: dict[str, Any], metrics: dict[str, float] | None = None) -> str:
    """Log ``model`` (CPU weights as safetensors, ``spec`` as JSON) as a LoggedModel of the
    active run, record the digests and provenance as the run's (write-once) parameters and
    artifacts, register it, and point ``@challenger`` at the new version; return the version."""

    active = mlflow.active_run()
    if active is None:
        raise RuntimeError("log_and_register needs an active MLflow run (the evaluate step's)")
    run_id = active.info.run_id
    with tempfile.TemporaryDirectory(prefix="hemo-register-") as tmp:
        folder = Path(tmp) / "model"
        save_model_folder(folder, model.to("cpu").eval(), spec)
        digests = {PARAM_WEIGHTS: sha256_file(folder / WEIGHTS_FILE), PARAM_SPEC: sha256_file(folder / SPEC_FILE)}
        val_patients = sorted(provenance.get("val_patients", []))
        # scans recorded only when the provenance knows them (a checkpoint of an older release does
        # not): an absent record reads as "unknown" at the gate, never as "none"
        series = ({key: sorted(provenance.get(key, [])) for key in SERIES_KEYS}
                  if "train_series" in provenance and "train_scans" in provenance else None)
        mlflow.log_params({**digests, PARAM_TRAIN_DIGEST: provenance["train_patients_sha256"],
                           PARAM_VAL_DIGEST: patients_digest(val_patients),
                           **({PARAM_SERIES_DIGEST: series_digest(series)} if series is not None else {}),
                           PARAM_SPLIT: json.dumps(provenance["split"], sort_keys=True)})
        mlflow.log_dict({"split": provenance["split"], "train_patients": provenance["train_patients"],
                         "val_patients": val_patients, **(series or {})}, TRAIN_PATIENTS_ARTIFACT)
        logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id, model_type=MODEL_TYPE,
                                                tags={"hemo.spec_format": spec.to_dict()["format"]})
        client().log_model_artifacts(logged.model_id, str(folder))
    mlflow.finalize_logged_model(logged.model_id, "READY")
    version = str(mlflow.register_model(f"models:/{logged.model_id}", MODEL_NAME, await_registration_for=60).version)
    tags = {  # for people browsing the registry; nothing reads these back as facts
        "hemo.split.salt": provenance["split"]["salt"],
        "hemo.split.val_fraction": str(provenance["split"]["val_fraction"]),
        "hemo.split.gate_fraction": str(provenance["split"]["gate_fraction"]),
        "hemo.train_patients.count": str(len(provenance["train_patients"])),
        "hemo.image_size": str(spec.image_size), "hemo.context": spec.context, "hemo.input": spec.input,
    }
    for key in ("micro_f2_context", "micro_f2_single"):
        if metrics and key in metrics:
            tags[key] = f"{metrics[key]:.4f}"
    tag_version(version, tags)
    client().set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    return version


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tag_version(version: str, tags: dict[str, str]) -> None:
    mlflow_client = client()
    for key, value in tags.items():
        mlflow_client.set_model_version_tag(MODEL_NAME, str(version), key, str(value)[:5000])


def registering_run(version: str) -> tuple[Any, dict[str, str]]:
    """The version's record and the parameters of the run that registered it (its own run: a
    version's run id is fixed when it is created)."""
    info = require_version(version)
    if not info.run_id:
        raise UserError(f"{MODEL_NAME} v{version} has no run (registered by hand), so neither its files nor its "
                        "training patients can be checked; register models with `hemo evaluate`")
    return info, dict(client().get_run(info.run_id).data.params)


def train_patients(version: str) -> list[str]:
    """The training patients a version recorded in its own run, checked against the digest that
    run logged as a parameter."""
    return seen_patients(version)["train"] or []


SERIES_KEYS = ("train_series", "val_series", "train_scans", "val_scans")
"""What a version records of its scans: pixel fingerprints and folder names, of train and val."""


def series_digest(series: dict[str, list[str]]) -> str:
    """sha256 of the scan records (:data:`SERIES_KEYS`, sorted lists), as one JSON document."""
    return hashlib.sha256(json.dumps({k: sorted(series[k]) for k in SERIES_KEYS}).encode()).hexdigest()


def seen_patients(version: str) -> dict[str, list[str] | None]:
    """The ``train`` and ``val`` patients a version recorded in its own run, and its scans' pixel
    fingerprints and folder names (:data:`SERIES_KEYS`), each checked against the digest that run
    logged as a parameter (None for what versions registered before it was recorded lack)."""

    info, params = registering_run(version)
    digest = params.get(PARAM_TRAIN_DIGEST)
    if not digest:
        raise UserError(f"{MODEL_NAME} v{version} records no training patients in its run (registered by hand or by "
                        "an older release), so no fair comparison is possible; retrain it, or promote by hand with "
                        "`hemo promote --version N --reason ...`")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=info.run_id, artifact_path=TRAIN_PATIENTS_ARTIFACT,
                                                        dst_path=tmp)
            recorded = json.loads(Path(local).read_text())
            patients = list(recorded["train_patients"])
            tuned = list(recorded["val_patients"]) if PARAM_VAL_DIGEST in params else None
            series = ({k: [str(x) for x in recorded[k]] for k in SERIES_KEYS}
                      if PARAM_SERIES_DIGEST in params else None)
        except (MlflowException, OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{MODEL_NAME} v{version}: its run's {TRAIN_PATIENTS_ARTIFACT} cannot be read "
                            f"({type(exc).__name__}); do not promote this version") from exc
    if (patients_digest(patients) != digest
            or (tuned is not None and patients_digest(tuned) != params[PARAM_VAL_DIGEST])
            or (series is not None and series_digest(series) != params[PARAM_SERIES_DIGEST])):
        raise UserError(f"{MODEL_NAME} v{version}: its patient lists do not match the digests its run recorded; "
                        "the artifact was changed, do not promote this version")
    return {"train": patients, "val": tuned, **{k: None if series is None else series[k] for k in SERIES_KEYS}}


def recorded_split(version: str) -> dict[str, Any]:
    """The split (salt, fractions) a version's run recorded when it registered the version."""
    _, params = registering_run(version)
    try:
        return dict(json.loads(params.get(PARAM_SPLIT, "{}")))
    except (TypeError, ValueError):
        return {}


# --- loading ---------------------------------------------------------------------------------


def load_model(uri_or_path: str) -> LoadedModel:
    """A registry URI (``models:/name@alias`` or ``models:/name/N``, resolved to a version once)
    or a local checkpoint of `hemo train`/`refine`."""
    if "://" not in uri_or_path and not uri_or_path.startswith("models:"):
        return _load_checkpoint(Path(uri_or_path))
    if not uri_or_path.startswith("models:/"):
        raise UserError(f"{uri_or_path}: load models from the registry (models:/{MODEL_NAME}/N or @alias) or a "
                        "local .pt checkpoint")
    _, version = resolve(uri_or_path)
    if version is None:  # resolve() returns a version for every models:/ URI it accepts
        raise UserError(f"{uri_or_path}: name a version (models:/{MODEL_NAME}/N) or an alias")
    return load_version(version)


def load_version(version: str) -> LoadedModel:
    """Download version ``version``'s spec and weights (nothing else), check them against the
    digests its run recorded, and rebuild the network from them."""

    label = f"{MODEL_NAME} v{version}"
    _, params = registering_run(version)
    location = client().get_model_version_download_uri(MODEL_NAME, str(version)).rstrip("/")
    try:
        names = {Path(a.path).name for a in mlflow.artifacts.list_artifacts(artifact_uri=location)}
    except MlflowException as exc:
        raise UserError(f"cannot list {label}'s files at {tracking.tracking_uri()}: {exc.message}") from exc
    expected = {PARAM_WEIGHTS: WEIGHTS_FILE, PARAM_SPEC: SPEC_FILE}
    if not set(expected.values()) <= names or not all(params.get(p) for p in expected):
        raise UserError(f"{label} is not in this release's model format (spec.json + model.safetensors registered by "
                        "`hemo evaluate`; it looks like a pt2/pickle model of an earlier release or one registered "
                        "by hand, and such archives can carry code): refused, nothing of it was loaded. Register its "
                        "weights again with `hemo evaluate --model <its checkpoint, e.g. outputs/refine/best.pt>`, "
                        "then `hemo promote --version N --reason ...` if it must serve")
    with tempfile.TemporaryDirectory(prefix="hemo-model-") as tmp:
        folder = Path(tmp)
        for param, name in expected.items():
            try:
                local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{location}/{name}", dst_path=tmp))
            except MlflowException as exc:
                raise UserError(f"cannot download {label}'s {name} from {tracking.tracking_uri()}: "
                                f"{exc.message}") from exc
            if sha256_file(local) != params[param]:
                raise UserError(f"{label}: its {name} is not the file its run registered (sha256 differs): the "
                                "artifact was changed after registration; refused, do not serve this version")
        try:
            module, spec = read_model_folder(folder)
        except ModelFileError as exc:
            raise UserError(f"{label} cannot be used: {exc}; register it again with `hemo evaluate`") from exc
    return LoadedModel(module, spec, version_uri(version), str(version))


def _load_checkpoint(path: Path) -> LoadedModel:
    if not path.is_file():
        raise UserError(f"model checkpoint {path} does not exist; pass a models:/ URI or an existing .pt file")
    try:
        module, spec, payload = load_checkpoint(path)
    except CheckpointError as exc:
        raise UserError(f"cannot use checkpoint {path}: {exc}; re-create it with `hemo train`/`refine` or pass "
                        "another --model") from exc
    return LoadedModel(module, spec, str(path), provenance=payload.get("provenance"))


# --- aliases ---------------------------------------------------------------------------------


def who() -> str:
    """The person (or service account) behind a manual registry change: HEMO_USER, else the login."""
    try:
        return os.environ.get("HEMO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


HISTORY_PREFIX = "hemo.alias_history."
"""Registered-model tags ``hemo.alias_history.<seq:06d>`` on MODEL_NAME: one per alias move."""
REASON_CHARS = 300


_UNCHECKED = object()
"""Default of ``move_champion``'s ``expected_reference``: the caller's decision did not use @reference."""


def move_champion(version: str, expected: str | None, how: str, reason: str,
                  expected_reference: Any = _UNCHECKED) -> str | None:
    """Point ``@champion`` at ``version`` if it still points at ``expected``, keep the replaced one
    as ``@previous``, tag both versions with who/when/why and append an alias-history entry.
    Returns the replaced version.

    A real compare-and-set: the compare and the writes happen while holding the promotion lease
    (:mod:`hemo_pipeline.services.champion_lease`), so two concurrent gates cannot both win.
    Raises :class:`AliasMoved` if the champion changed since the caller read it (nothing is
    changed), :class:`LeaseBypassed` if ``@champion`` is not ``version`` right after our write
    (someone wrote it without the lease), and LeaseBusy if the lease stayed taken. A decision that
    measured drift against ``@reference`` passes the version it read as ``expected_reference``:
    if a person moved ``@reference`` meanwhile, nothing changes either (:class:`AliasMoved`)."""
    with champion_lease(default_holder(f"{how} v{version}")) as lease:
        current = alias_version(CHAMPION)
        _reconcile_history(CHAMPION, current)
        if current != expected:
            raise AliasMoved(f"@{CHAMPION} moved from {_v(expected)} to {_v(current)} while this step ran; nothing "
                             "was changed: run the gate again to compare against the new champion")
        if expected_reference is not _UNCHECKED:
            reference = alias_version(REFERENCE)
            if reference != expected_reference:
                raise AliasMoved(f"@{REFERENCE} moved from {_v(expected_reference)} to {_v(reference)} while this step "
                                 "ran; nothing was changed: run the gate again to measure drift against the new "
                                 "reference")
        _still_held(lease, CHAMPION, version)
        mlflow_client = client()
        if current is not None and current != version:
            mlflow_client.set_registered_model_alias(MODEL_NAME, PREVIOUS, current)
            tag_version(current, {"champion.replaced_by": version, "champion.replaced_at": now()})
        mlflow_client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
        tag_version(version, {"champion.how": how, "champion.by": who(), "champion.at": now(),
                              "champion.reason": reason, "champion.replaced": current or "none"})
        after = alias_version(CHAMPION)
        if after != version:
            raise LeaseBypassed(f"@{CHAMPION} is {_v(after)} right after this step set it to v{version}: something "
                                "moved it without the promotion lease (an older hemo release, or a hand edit in "
                                "the MLflow UI); check the alias history and promote again with `hemo promote`")
        _still_held(lease, CHAMPION, version)
        _append_history(CHAMPION, version, current, how, reason)
    return current


def _still_held(lease: Any, alias: str, version: str) -> None:
    """Check just before writing that nobody broke our lease (a breaker that read it as stale
    too late): narrows the window the lease's check-then-act break leaves to one HTTP call."""
    if not champion_lease_holds(lease):
        raise LeaseBypassed(f"the promotion lease was taken from this step before it wrote @{alias} v{version}: "
                            "another writer broke it; run the step again (it compares with the alias then)")


def _reconcile_history(alias: str, current: str | None) -> None:
    """Under the lease: if ``alias`` points elsewhere than its last history entry says (a writer
    died between moving it and recording it, or an older release moved it), record what is, so
    the history stays one chain."""
    last = next((h for h in reversed(alias_history()) if h.get("alias") == alias), None)
    recorded = None if last is None else last.get("version")
    if current is not None and str(current) != str(recorded):
        _append_history(alias, current, recorded, "reconciled",
                        f"@{alias} was v{current} without a history entry (a writer stopped between moving it and "
                        "recording it, or it was moved outside hemo)")


def move_reference(version: str, reason: str) -> str | None:
    """Point ``@reference`` at ``version`` under the promotion lease, tag the version with
    who/when/why and append an alias-history entry. Returns the version it replaced. The only
    code that sets ``@reference``; it writes as ``move_champion`` does (history reconciled first,
    the lease re-checked before writing and before recording, the alias re-read after writing)."""
    with champion_lease(default_holder(f"reference v{version}")) as lease:
        current = alias_version(REFERENCE)
        _reconcile_history(REFERENCE, current)
        if current == version:
            return current
        _still_held(lease, REFERENCE, version)
        client().set_registered_model_alias(MODEL_NAME, REFERENCE, version)
        tag_version(version, {"reference.by": who(), "reference.at": now(), "reference.reason": reason})
        after = alias_version(REFERENCE)
        if after != version:
            raise LeaseBypassed(f"@{REFERENCE} is {_v(after)} right after this step set it to v{version}: something "
                                "moved it without the promotion lease; check the alias history and run again")
        _still_held(lease, REFERENCE, version)
        _append_history(REFERENCE, version, current, "reference", reason)
    return current


def reference_version() -> str | None:
    """The version behind ``@reference``, or None."""
    return alias_version(REFERENCE)


def alias_history() -> list[dict[str, Any]]:
    """Every recorded alias move of MODEL_NAME, oldest first (by ``seq``)."""
    try:
        tags = dict(client().get_registered_model(MODEL_NAME).tags or {})
    except MlflowException:
        return []
    entries = []
    for key, value in tags.items():
        if key.startswith(HISTORY_PREFIX):
            try:
                entries.append(dict(json.loads(value)))
            except (TypeError, ValueError):
                continue
    return sorted(entries, key=lambda e: int(e.get("seq", 0)))


def _append_history(alias: str, version: str, previous: str | None, how: str, reason: str) -> dict[str, Any]:
    """Record one alias move. Call only while holding the lease: ``seq`` is 1 + the largest seq
    recorded so far, so two writers without it could pick the same key."""
    tags = dict(client().get_registered_model(MODEL_NAME).tags or {})
    seqs = [int(k[len(HISTORY_PREFIX):]) for k in tags if k.startswith(HISTORY_PREFIX) and k[len(HISTORY_PREFIX):].isdigit()]
    active = mlflow.active_run()
    entry = {"seq": max(seqs, default=0) + 1, "alias": alias, "version": str(version),
             "previous": previous, "how": how, "by": who(), "at": now(), "reason": reason[:REASON_CHARS],
             "run_id": active.info.run_id if active is not None else None}
    client().set_registered_model_tag(MODEL_NAME, f"{HISTORY_PREFIX}{entry['seq']:06d}",
                                      json.dumps(entry, separators=(",", ":")))
    return entry


def _v(version: str | None) -> str:
    return f"v{version}" if version else "none"
