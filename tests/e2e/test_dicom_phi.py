"""No patient data leaves the import: plant fake identifying data in phantom DICOM headers (and in
the export's folder names), run `hemo import-dicom` as a user would (a real process, MLflow logging
on, embedded store), then search every byte it wrote, its stdout/stderr and every MLflow param,
tag and metric for each planted value and each UID. The mapping file, which the user asked for and
which lives outside the project, is the positive control: there the UIDs must be found."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from hemo_model.data.synth_dicom import fake_phi, generate_dicom_dataset

REPO = Path(__file__).resolve().parents[2]
SEED = 5
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _needles(dicom: Path) -> set[str]:
    """Every planted identifying value (whole and by name component) and every UID in the input."""
    needles: set[str] = set()
    for split, n in (("train", 2), ("test", 1)):
        for index in range(n):
            for value in fake_phi(SEED, split, index).values():
                needles.add(value)
                needles.update(part for part in value.split("^") if len(part) >= 6)
                if value.isdigit() and len(value) == 8:  # dates, also as ISO
                    needles.add(f"{value[:4]}-{value[4:6]}-{value[6:]}")
    for path in dicom.rglob("*.dcm"):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        needles.update(str(ds.get(k)) for k in UID_KEYWORDS if ds.get(k))
    return needles


def _hemo(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "HEMO_"))}
    env.update(PYTHONPATH=str(REPO), HEMO_DICOM_SALT="phi-test-salt", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "hemo_pipeline.cli", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=120)


def _found(data: bytes, needles: set[str]) -> set[str]:
    return {n for n in needles if n.encode() in data}


@pytest.mark.slow
def test_no_planted_identifier_or_uid_reaches_outputs_logs_or_mlflow(tmp_path: Path) -> None:
    dicom = tmp_path / "export"  # PACS-like tree: <PatientID>/CT2/IM0001.dcm
    generate_dicom_dataset(dicom, train_patients=2, test_patients=1, image_size=64, seed=SEED)
    needles = _needles(dicom)
    assert len(needles) > 100
    iso_dates = {n for n in needles if n.count("-") == 2 and n[:4].isdigit()}
    assert _found(b"".join(p.read_bytes() for p in dicom.rglob("*.dcm")), needles) == needles - iso_dates  # planted

    workdir, private = tmp_path / "project", tmp_path / "private"
    workdir.mkdir()
    runs = [
        _hemo(workdir, "import-dicom", "--dicom", str(dicom / "train"), "--labels", str(dicom / "train_labels.csv"),
              "--out", "data", "--mapping", str(private / "mapping.csv")),
        _hemo(workdir, "import-dicom", "--dicom", str(dicom / "test"), "--out", "data",
              "--windows", "brain,subdural,bone"),
        _hemo(workdir, "import-dicom", "--dicom", str(dicom / "test"), "--out", "data"),  # refused: already there
    ]
    assert [r.returncode for r in runs] == [0, 0, 2], [r.stderr[-2000:] for r in runs]

    written = [p for p in workdir.rglob("*") if p.is_file()]
    assert {"data", "reports", "mlflow.db"} <= {p.relative_to(workdir).parts[0] for p in written}
    assert any(p.suffix == ".png" for p in written) and any(p.suffix == ".jpg" for p in written)
    leaks = {str(p.relative_to(workdir)): _found(p.read_bytes(), needles) for p in written}
    assert {k: v for k, v in leaks.items() if v} == {}
    assert not any(_found(str(p.relative_to(workdir)).encode(), needles) for p in written)
    for run in runs:
        assert _found((run.stdout + run.stderr).encode(), needles) == set()

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    logged = [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]
    assert len(logged) == 2 and all(r.data.tags.get("hemo.step") == "import-dicom" for r in logged)
    text = repr([(r.data.params, r.data.tags, r.data.metrics, r.info.run_name) for r in logged])
    assert _found(text.encode(), needles) == set()

    mapping = (private / "mapping.csv").read_bytes()  # the positive control: the scan does find UIDs
    assert len(_found(mapping, needles)) > 50
