"""What the registry attacks share: a project folder with labelled patients, a real registry, and
ways to put versions into it the way an attacker with write access to the registry would.

Registrations go through MLflow's own API where an attacker would use it (``mlflow.pytorch``,
``create_model_version``, tags, overwriting artifacts), and through :func:`register_hemo` (the
project's own `hemo evaluate` path) for the honest versions an attack starts from.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import mlflow
import torch

from hemo_model.model.networks import HemoNet
from hemo_pipeline.services import registry, tracking
from tests.markers import SIZE

PARAMS = """
split: {val_fraction: 0.2, gate_fraction: 0.4, salt: markers}
score: {context: 1}
gate: {bootstrap: 200, permutations: 200, min_patients: 8, min_positive_patients: 1}  # ~12 gate patients
"""


class Touch:
    """A pickled object whose unpickling creates ``marker``: what an attacker would run instead."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (Path(self.marker),))


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return HemoNet(head="linear").eval()


def provenance(train_patients: list[str], train_series: list[str] | None = None,
               scans_recorded: bool = True) -> dict[str, Any]:
    """What `hemo train` records; without ``scans_recorded``, as a release before scan records did
    (patients by folder name, no fingerprints)."""
    from hemo_model.data.roles import patients_digest

    recorded = {"split": {"salt": "markers", "val_fraction": 0.2, "gate_fraction": 0.4},
                "train_patients": sorted(train_patients), "train_patients_sha256": patients_digest(train_patients)}
    if scans_recorded:
        recorded.update({"train_series": sorted(train_series or []), "train_scans": sorted(train_patients)})
    return recorded


def register_hemo(train_patients: list[str], train_series: list[str] | None = None, scans_recorded: bool = True) -> str:
    """An honest version, registered the way `hemo evaluate` does (``train_series``: the pixel
    fingerprints of the scans it trained on)."""
    from hemo_model.model.spec import ModelSpec

    tracking.configure()
    with mlflow.start_run(run_name="evaluate"):
        return registry.log_and_register(tiny_model(), ModelSpec(head="linear", image_size=SIZE),
                                         provenance(train_patients, train_series, scans_recorded))


def register_pt2() -> tuple[str, str]:
    """A version in the pt2 format of earlier releases, logged with MLflow's own API; returns
    (version, run id)."""
    tracking.configure()
    with mlflow.start_run(run_name="evaluate") as run:
        info = mlflow.pytorch.log_model(tiny_model(), name="model", serialization_format="pt2",
                                        input_example=torch.zeros(2, 3, SIZE, SIZE).numpy(),
                                        validate_serving_input=False, registered_model_name=registry.MODEL_NAME,
                                        pip_requirements=["torch"])
    return str(info.registered_model_version), run.info.run_id


def version_files(version: str) -> Path:
    """The local folder (embedded store) that holds a version's files."""
    uri = mlflow.MlflowClient().get_model_version_download_uri(registry.MODEL_NAME, version)
    return Path(uri.removeprefix("file://"))


def craft_pt2(archive: Path, marker: Path, variant: str) -> None:
    """Rewrite a pt2 archive as the issue's attack: a second weights config whose name differs
    only in letter case (``variant="case"``) or repeats the name (``"duplicate"``) marks the
    first weight ``use_pickle: true``, and that weight's record becomes a pickle payload. MLflow's
    pickle-free check reads names case-sensitively (and the first entry); torch's reader does not."""
    source = zipfile.ZipFile(archive)
    entries = [(info, source.read(info.filename)) for info in source.infolist()]
    source.close()
    config_name = next(i.filename for i, _ in entries if i.filename.endswith("weights/model_weights_config.json"))
    config = json.loads(next(d for i, d in entries if i.filename == config_name))
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    weight = config_name.rsplit("/", 1)[0] + "/" + config["config"][first]["path_name"]
    evil_name = config_name[: -len("json")] + "JSON" if variant == "case" else config_name
    payload = pickle.dumps(Touch(marker), protocol=2)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as out:
        for info, data in entries:
            out.writestr(info, payload if info.filename == weight else data)
        out.writestr(evil_name, json.dumps(config).encode())
