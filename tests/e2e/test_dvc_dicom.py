"""`dvc repro` from a DICOM folder to predictions: scripts/use_dicom.sh makes the raw DICOM the
versioned input and adds the import stages; the rest of dvc.yaml runs unchanged on what they write."""

from __future__ import annotations

import csv
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import TINY_GATE, dvc_params, run_ok

REPO = Path(__file__).resolve().parents[2]
# DICOM names are salted hashes; with this salt the 8 phantom series fall 4/2/2 into train/val/gate
# under the split salt below (hash buckets are lumpy on 8 patients).
PARAMS = f"""
split: {{val_fraction: 0.25, gate_fraction: 0.25, salt: dicom-25}}
train: {{image_size: 64, epochs: 1, batch_size: 16, cache_images: true, max_steps: 2}}
refine: {{epochs: 1, batch_size: 8, max_steps: 2}}
gate: {TINY_GATE}
"""


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_ok(args, cwd, HEMO_DICOM_SALT="ci-salt")


@pytest.mark.slow
def test_dvc_repro_from_dicom_to_predictions(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", ".dvcignore", "data.dvc"):
        shutil.copy(REPO / name, project / name)
    for folder in ("hemo_model", "hemo_pipeline", "scripts"):
        shutil.copytree(REPO / folder, project / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (project / "params.yaml").write_text(dvc_params(PARAMS))
    _run(["hemo", "synth", "--format", "dicom", "--out", "dicom", "--train-patients", "8", "--test-patients", "2",
          "--image-size", "64", "--seed", "3"], project)
    _run(["git", "init", "-q"], project)
    _run(["dvc", "init", "-q"], project)
    _run(["scripts/use_dicom.sh", "dicom"], project)
    assert not (project / "data.dvc").exists() and (project / "dicom.dvc").is_file()

    repro = _run(["dvc", "repro"], project)
    for stage in ("import-train", "import-test", "validate", "train", "refine", "evaluate", "gate", "score"):
        assert f"Running stage '{stage}'" in repro.stdout, repro.stdout[-3000:]
    with (project / "outputs/predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    scored = {row["dirname"] for row in rows}
    assert len(scored) == 2 and len(rows) == sum(1 for _ in (project / "data/test").rglob("*.jpg"))
    assert all(name.startswith("ID_") and len(name) == 13 for name in scored)  # salted hashes, no UIDs
    assert "dicom" not in {p.name for p in (project / "data").iterdir()}
    status = _run(["dvc", "status"], project).stdout
    assert "changed" not in status
