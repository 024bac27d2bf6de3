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
    private = tmp_path / "private"  # outside the project: what names patients
    _run(["scripts/use_dicom.sh", "dicom", str(private)], project)
    assert not (project / "data.dvc").exists() and (project / "dicom.dvc").is_file()

    repro = _run(["dvc", "repro"], project)
    for stage in ("import-train", "import-test", "validate", "train", "refine", "evaluate", "gate", "score", "report"):
        assert f"Running stage '{stage}'" in repro.stdout, repro.stdout[-3000:]
    with (project / "outputs/predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    scored = {row["dirname"] for row in rows}
    assert len(scored) == 2 and len(rows) == sum(1 for _ in (project / "data/test").rglob("*.jpg"))
    assert all(name.startswith("ID_") and len(name) == 13 for name in scored)  # salted hashes, no UIDs
    assert "dicom" not in {p.name for p in (project / "data").iterdir()}
    status = _run(["dvc", "status"], project).stdout
    assert "changed" not in status
    _report_stage_keeps_patients_out_of_the_project(project, private)
    _results_back_to_the_pacs(project, private)


def _report_stage_keeps_patients_out_of_the_project(project: Path, private: Path) -> None:
    """The DVC `report` stage (use_dicom.sh RAW PRIVATE): the test import's UID mapping and the
    objects live in PRIVATE, owner-only; the project holds counts, and no UID of the mapping."""
    import json

    mapping = private / "test_mapping.csv"
    assert mapping.stat().st_mode & 0o777 == 0o600 and private.stat().st_mode & 0o777 == 0o700
    counts = json.loads((project / "reports/report.json").read_text())
    assert counts["exams"] == counts["sr"] == counts["fhir"] == 2, counts
    assert len(list((private / "results").glob("ID_*/sr.dcm"))) == 2
    assert len(list((private / "results").glob("ID_*/diagnostic_report.json"))) == 2
    with mapping.open() as handle:
        uids = {row[c] for row in csv.DictReader(handle) for c in ("StudyInstanceUID", "SeriesInstanceUID",
                                                                      "SOPInstanceUID")}
    assert uids
    raw = {project / "dicom", project / ".dvc", project / ".git"}  # the input itself and DVC's copy of it
    for path in project.rglob("*"):
        if path.is_file() and not any(path.is_relative_to(folder) for folder in raw):
            text = path.read_bytes().decode("latin-1")
            assert not [uid for uid in uids if uid in text], path


def _results_back_to_the_pacs(project: Path, private: Path) -> None:
    """The champion's results go back where radiologists read (issue 21): the private UID mapping
    (a re-import with the project's salt, outside the project), `hemo score --overlays`, `hemo
    report --push` to a real Orthanc that holds the source studies; then QIDO-RS and WADO-RS: the
    SR is filed under the source study, its references resolve to instances there, the overlay
    opens; every object passes dciodvfy; a second push adds nothing."""
    import pydicom
    from dicomweb_client import DICOMwebClient

    from tests.e2e.test_dicomweb_orthanc import _running_orthanc

    _run(["hemo", "score", "--data", "data/test", "--out", str(private / "scored/predictions.csv"), "--overlays",
          str(private / "overlays")], project)
    (private / "orthanc").mkdir()
    with _running_orthanc(private / "orthanc") as url:
        client = DICOMwebClient(url=url)
        client.store_instances([pydicom.dcmread(p) for p in sorted((project / "dicom/test").rglob("*.dcm"))])
        command = ["hemo", "report", "--no-mlflow", "--exams", str(private / "scored/exams.csv"), "--mapping",
                   str(private / "test_mapping.csv"), "--dicom", "dicom/test", "--overlays", str(private / "overlays"),
                   "--out", str(private / "results"), "--push", url, "--allow-http"]
        first = _run(command, project)
        assert "report: 2 exams -> " in first.stdout and "(STOW-RS)" in first.stdout, first.stdout
        objects = sorted((private / "results").rglob("*.dcm"))
        assert len([p for p in objects if p.name == "sr.dcm"]) == 2 and any(p.name.startswith("sc_") for p in objects)
        studies = {str(pydicom.dcmread(p, stop_before_pixels=True).StudyInstanceUID) for p in objects}
        counts = {s: len(client.search_for_instances(study_instance_uid=s)) for s in studies}
        for path in objects:
            made = pydicom.dcmread(path, stop_before_pixels=True)
            found = client.search_for_instances(study_instance_uid=made.StudyInstanceUID,
                                                search_filters={"SOPInstanceUID": made.SOPInstanceUID})
            assert len(found) == 1, path  # filed under the source study
            if path.name == "sr.dcm":
                evidence = made.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
                for ref in evidence.ReferencedSOPSequence:  # the evidence slices are instances of that study
                    assert len(client.search_for_instances(
                        study_instance_uid=made.StudyInstanceUID,
                        search_filters={"SOPInstanceUID": ref.ReferencedSOPInstanceUID})) == 1
            else:
                back = client.retrieve_instance(made.StudyInstanceUID, made.SeriesInstanceUID, made.SOPInstanceUID)
                assert back.pixel_array.shape[-1] == 3 and back.BurnedInAnnotation == "YES"
        if shutil.which("dciodvfy"):
            for path in objects:
                result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
                assert not [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        _run(command, project)
        assert {s: len(client.search_for_instances(study_instance_uid=s)) for s in studies} == counts

        # the sources read from the PACS instead of a folder (WADO-RS): the same objects, same UIDs
        from_pacs = private / "results-pacs"
        again = _run([*command[:command.index("--dicom")], "--dicomweb", url, "--overlays", str(private / "overlays"),
                      "--out", str(from_pacs), "--allow-http"], project)
        assert "report: retrieved 2 series" in again.stdout and "report: 2 exams -> " in again.stdout, again.stdout
        made = sorted(p.relative_to(from_pacs) for p in from_pacs.rglob("*.dcm"))
        assert made == [p.relative_to(private / "results") for p in objects]
        for name in made:
            assert (pydicom.dcmread(from_pacs / name, stop_before_pixels=True).SOPInstanceUID
                    == pydicom.dcmread(private / "results" / name, stop_before_pixels=True).SOPInstanceUID)
        assert not list(from_pacs.glob(".sources-*"))  # the retrieved series are gone after the run
