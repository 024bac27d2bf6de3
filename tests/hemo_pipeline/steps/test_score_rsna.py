"""`hemo score --format rsna`: phantom DICOM imported with a mapping, scored by a registered model,
written as RSNA's submission (six types per image, named by SOPInstanceUID, any = max)."""

from __future__ import annotations

import csv
from dataclasses import asdict
from pathlib import Path

import mlflow
import numpy as np
import pydicom
import pytest

from hemo_model import CLASSES
from hemo_model.data.roles import patients_digest
from hemo_model.data.rsna import SUBMISSION_TYPES, TYPE_TO_CLASS
from hemo_model.data.synth_dicom import generate_dicom_dataset
from hemo_pipeline.cli import main
from hemo_pipeline.services import registry, tracking
from hemo_pipeline.services.settings import SplitSettings
from tests.markers import SIZE, MarkerNet, marker_architecture, marker_spec

pytestmark = pytest.mark.usefixtures(marker_architecture.__name__)


@pytest.fixture
def imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose data/test was imported from phantom DICOM, with its mapping file."""
    generate_dicom_dataset(tmp_path / "dicom", train_patients=1, test_patients=2, image_size=SIZE, seed=4,
                           shuffle_names=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEMO_DICOM_SALT", "score-test")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HEMO_PARENT_RUN_ID", raising=False)
    assert main(["import-dicom", "--no-mlflow", "--dicom", "dicom/test", "--out", "data",
                 "--mapping", "private/mapping.csv"]) == 0
    return tmp_path


def _register() -> str:
    tracking.configure()
    seen: set[str] = set()
    provenance = {"split": asdict(SplitSettings()), "train_patients": [], "train_patients_sha256": patients_digest(seen)}
    with mlflow.start_run(run_name="evaluate"):
        return registry.log_and_register(MarkerNet(("read", "positive", "read", "negative", "read")),
                                         marker_spec(), provenance)


def test_rsna_submission_names_images_by_uid_with_six_types(imported: Path) -> None:
    version = _register()
    assert main(["score", "--model", registry.version_uri(version), "--data", "data/test", "--out", "out/p.csv",
                 "--format", "rsna", "--mapping", "private/mapping.csv", "--context", "1", "--device", "cpu"]) == 0
    with open("out/p_probabilities.csv") as handle:
        probs = {row["ID"]: row for row in csv.DictReader(handle)}
    with open("private/mapping.csv") as handle:
        sop_of = {row["ID"]: row["SOPInstanceUID"] for row in csv.DictReader(handle)}
    with open("out/p_rsna.csv") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["ID", "Label"]
        submission = {ident: float(value) for ident, value in reader}
    dicom_uids = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                  for p in Path("dicom/test").iterdir()}
    assert len(submission) == 6 * len(probs) and set(sop_of.values()) <= dicom_uids
    for name, row in probs.items():
        five = {c: float(row[c]) for c in CLASSES}
        for kind in SUBMISSION_TYPES:
            expected = max(five.values()) if kind == "any" else five[TYPE_TO_CLASS[kind]]
            assert submission[f"ID_{sop_of[name]}_{kind}"] == pytest.approx(expected, abs=2e-6)
    assert np.mean([submission[k] for k in submission if k.endswith("_intraventricular")]) > 0.99  # "positive"


def test_rsna_format_needs_a_mapping_that_covers_every_slice(imported: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--model", "x.pt", "--data", "data/test", "--format", "rsna"]) == 2
    assert "--format rsna needs --mapping FILE" in capsys.readouterr().err
    lines = Path("private/mapping.csv").read_text().splitlines()
    Path("short.csv").write_text("\n".join(lines[:-1]) + "\n")
    assert main(["score", "--model", "x.pt", "--data", "data/test", "--format", "rsna", "--mapping", "short.csv"]) == 2
    err = capsys.readouterr().err
    assert "is not in the mapping file short.csv" in err and "1.2.826" not in err
    assert not Path("outputs").exists()
