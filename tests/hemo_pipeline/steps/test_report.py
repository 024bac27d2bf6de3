"""`hemo report`: the scored exams as a TID 1500 SR, evidence Secondary Captures and a FHIR
DiagnosticReport, filed in the source study, validated (dciodvfy), with derived UIDs and nothing
of the header but the filing identifiers.

The exams file is written here by hand for series imported from a DICOM phantom (what `hemo score`
writes is tested with score; the pipeline end to end with Orthanc in tests/e2e): the report
step reads files only, so its contract is checked without a model."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from hemo_model import CLASSES
from hemo_model.data.synth_dicom import fake_phi, generate_dicom_dataset
from hemo_pipeline.cli import main
from hemo_pipeline.services.score_files import EXAM_CSV_COLUMNS, saliency_file, save_saliency

SEED, SIZE = 5, 48
DCIODVFY = shutil.which("dciodvfy")
# identifying header values the objects must not carry (the filing identifiers may: PatientName, ID, ...)
NOT_FOR_FILING = ("InstitutionName", "InstitutionAddress", "ReferringPhysicianName", "PerformingPhysicianName",
                  "OperatorsName", "StationName")


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DICOM phantom (2 studies) imported with its private mapping; read-only."""
    root = tmp_path_factory.mktemp("report")
    generate_dicom_dataset(root / "dicom", train_patients=1, test_patients=2, image_size=SIZE, seed=SEED)
    project = root / "project"
    project.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(project)
        mp.setenv("HEMO_DICOM_SALT", "report-test")
        assert main(["import-dicom", "--no-mlflow", "--dicom", str(root / "dicom" / "test"), "--out", "data",
                     "--mapping", str(root / "mapping.csv")]) == 0
    return root


def _mapping(root: Path) -> list[dict[str, str]]:
    with (root / "mapping.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _project(imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, dict]:
    """A project with exams.csv, predictions_models.json and one saliency map per exam (ICH), as
    `hemo score --overlays` writes them; returns (project, the exams by folder)."""
    project = tmp_path / "project"
    (project / "outputs").mkdir(parents=True)
    monkeypatch.chdir(project)
    rows = _mapping(imported)
    exams = {}
    for i, dirname in enumerate(sorted({r["dirname"] for r in rows})):
        names = [r["ID"] for r in rows if r["dirname"] == dirname]
        probabilities = [0.9 - 0.5 * i, 0.7 - 0.5 * i, 0.2, 0.1, 0.05, 0.01]
        evidence = [names[10:13], names[10:12], names[5:6], names[6:9], names[3:4], names[1:2]]
        exams[dirname] = {"probabilities": probabilities, "evidence": evidence,
                          "triage": ["high_risk", "defer"][i], "calibrated": [1, 0][i]}
        yy, xx = np.mgrid[0:32, 0:32]
        save_saliency(saliency_file(project / "overlays", dirname, "ich"),  # a slice of its own: the SC must name it
                      np.exp(-((yy - 12) ** 2 + (xx - 18) ** 2) / 20.0), names[14])
    with (project / "outputs/exams.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(EXAM_CSV_COLUMNS)
        for dirname, e in exams.items():
            writer.writerow([dirname, 30, *e["probabilities"], e["triage"], e["calibrated"],
                             *(";".join(names) for names in e["evidence"])])
    (project / "outputs/predictions_models.json").write_text(json.dumps(
        {"models": [{"uri": "models:/hemorrhage-classifier/7", "version": "7", "source": "x"}]}))
    return project, exams


def _report(imported: Path, out: Path, *extra: str) -> int:
    return main(["report", "--no-mlflow", "--mapping", str(imported / "mapping.csv"), "--dicom",
                 str(imported / "dicom" / "test"), "--overlays", "overlays", "--out", str(out), *extra])


def test_sr_sc_and_fhir_say_what_the_exams_file_says_filed_in_the_source_study(
        imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _, exams = _project(imported, tmp_path, monkeypatch)
    out = tmp_path / "results"
    assert _report(imported, out) == 0
    assert "report: 2 exams -> " in capsys.readouterr().out
    sop = {(r["dirname"], r["ID"]): r for r in _mapping(imported)}
    for dirname, exam in exams.items():
        sr = hd.sr.srread(out / dirname / "sr.dcm")
        first = sop[(dirname, exam["evidence"][0][0])]
        assert sr.StudyInstanceUID == first["StudyInstanceUID"] and sr.SeriesInstanceUID != first["SeriesInstanceUID"]
        source = pydicom.dcmread(next(p for p in (imported / "dicom" / "test").rglob("*.dcm")
                                      if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                                      == first["SOPInstanceUID"]))
        assert (sr.PatientID, sr.PatientName) == (source.PatientID, source.PatientName)
        groups = hd.sr.MeasurementReport.from_sequence([sr]).get_image_measurement_groups()
        assert len(groups) == 6
        for group, probability, names in zip(groups, exam["probabilities"], exam["evidence"]):
            (measurement,) = group.get_measurements(name=codes.DCM.Probability)
            assert measurement.value == pytest.approx(probability)
            assert [i.referenced_sop_instance_uid for i in group.source_images] == [
                sop[(dirname, n)]["SOPInstanceUID"] for n in names]
        (triage,) = groups[0].get_qualitative_evaluations()
        assert triage.value == {"high_risk": codes.SCT.HighRisk, "defer": hd.sr.CodedConcept(
            "DEFER", "99HEMO", "Deferred to a radiologist")}[exam["triage"]]
        sc = pydicom.dcmread(out / dirname / "sc_ich.dcm")
        assert list(sc.ImageType)[:2] == ["DERIVED", "SECONDARY"] and sc.BurnedInAnnotation == "YES"
        assert "NOT FOR DIAGNOSIS" in sc.ImageComments and sc.StudyInstanceUID == first["StudyInstanceUID"]
        assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == sop[(dirname, f"{dirname[3:]}_14.jpg")][
            "SOPInstanceUID"]
        assert sc.pixel_array.shape[-1] == 3 and not [p for p in out.joinpath(dirname).iterdir()
                                                      if p.name.startswith("sc_") and p.name != "sc_ich.dcm"]
        from fhir.resources.R4B.bundle import Bundle

        bundle = Bundle.model_validate(json.loads((out / dirname / "diagnostic_report.json").read_text()))
        report, *observations = [e.resource for e in bundle.entry]
        assert report.identifier[0].value == f"urn:oid:{sr.SOPInstanceUID}"
        assert report.imagingStudy[0].identifier.value == f"urn:oid:{first['StudyInstanceUID']}"
        assert [float(o.valueQuantity.value) for o in observations] == pytest.approx(exam["probabilities"])
        assert [o.code.coding[0].code for o in observations] == ["1386000", *(c.upper() for c in CLASSES)]
        assert ("NOT calibrated" in report.conclusion) == (exam["calibrated"] == 0)


@pytest.mark.skipif(DCIODVFY is None, reason="dciodvfy (Debian dicom3tools) is not installed; `make test` installs "
                    "it as root with apt")
def test_every_object_validates_with_dciodvfy(imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _project(imported, tmp_path, monkeypatch)
    assert _report(imported, tmp_path / "results") == 0
    objects = sorted((tmp_path / "results").rglob("*.dcm"))
    assert len(objects) == 4
    for path in objects:
        result = subprocess.run([str(DCIODVFY), str(path)], capture_output=True, text=True, timeout=60)
        lines = (result.stdout + result.stderr).splitlines()
        assert not [line for line in lines if line.startswith("Error")], lines
        # the private scheme's codes are the only warnings
        assert all("<99HEMO>" in line for line in lines if line.startswith("Warning")), lines


def test_only_the_filing_identifiers_leave_the_header_and_the_project_gets_counts_only(
        imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """highdicom handed a whole header copies the institution, station and physicians into the
    objects; the report hands it the filing identifiers only. Nothing that names the patient or a
    UID reaches the project's report.json or the output."""
    project, _ = _project(imported, tmp_path, monkeypatch)
    assert _report(imported, tmp_path / "results") == 0
    printed = capsys.readouterr()
    phi = [fake_phi(SEED, "test", i) for i in range(2)]
    written = b"".join(p.read_bytes() for p in (tmp_path / "results").rglob("*") if p.is_file())
    for values in phi:
        for keyword in NOT_FOR_FILING:
            assert values[keyword].encode() not in written, keyword
    uids = {r[k] for r in _mapping(imported) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")}
    in_project = printed.out + printed.err + (project / "reports/report.json").read_text()
    assert not [v for values in phi for v in values.values() if v in in_project]
    assert not [uid for uid in uids if uid in in_project]
    assert json.loads((project / "reports/report.json").read_text())["sr"] == 2
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "results").rglob("*") if p.is_file())


def test_a_second_run_replaces_the_same_objects(imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Derived UIDs: the same series and model version give the same SR and SC instances (a PACS
    replaces them instead of adding copies); another model version gives new ones."""
    _project(imported, tmp_path, monkeypatch)

    def uids(out: Path) -> dict[str, str]:
        return {str(p.relative_to(out)): str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                for p in sorted(out.rglob("*.dcm"))}

    assert _report(imported, tmp_path / "a") == 0
    assert _report(imported, tmp_path / "b") == 0
    first = uids(tmp_path / "a")
    assert first == uids(tmp_path / "b") and len(set(first.values())) == 4
    assert _report(imported, tmp_path / "a") == 0
    assert uids(tmp_path / "a") == first and len(list((tmp_path / "a").rglob("*"))) == 2 + 6  # 2 folders, 3 files each
    models = json.loads(Path("outputs/predictions_models.json").read_text())
    models["models"][0]["version"] = "8"
    Path("outputs/predictions_models.json").write_text(json.dumps(models))
    assert _report(imported, tmp_path / "c") == 0
    assert not set(uids(tmp_path / "c").values()) & set(first.values())


@pytest.mark.parametrize(("change", "message"), [
    ("inside", "is inside the project; the objects carry patient identifiers"),
    ("inside_project_dir", "is inside the project; the objects carry patient identifiers"),
    ("no_mapping_row", "has no row in the --mapping file"),
    ("http", "plain http sends patient data"),
    ("uid_root", "is not a UID root"),
    ("bad_bin", "row 2: triage must be one of"),
    ("empty", "lists no exam"),
    ("bad_saliency", "is not a saliency map of `hemo score --overlays`"),
])
def test_user_errors_give_one_line_and_write_nothing(imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str], change: str,
                                                     message: str) -> None:
    project, _ = _project(imported, tmp_path, monkeypatch)
    out, extra = tmp_path / "results", []
    if change == "inside":
        out = project / "results"
    elif change == "inside_project_dir":  # an orchestrator runs the step in a run folder, the project elsewhere
        other = tmp_path / "project-of-the-dag"
        other.mkdir()
        monkeypatch.setenv("HEMO_PROJECT_DIR", str(other))
        out = other / "private"
    elif change == "no_mapping_row":
        text = (project / "outputs/exams.csv").read_text().replace("_10.jpg", "_99.jpg")
        (project / "outputs/exams.csv").write_text(text)
    elif change == "http":
        extra = ["--push", "http://127.0.0.1:9/dicom-web"]
    elif change == "uid_root":
        extra = ["--uid-root", "1.02.3"]
    elif change == "bad_bin":
        text = (project / "outputs/exams.csv").read_text().replace(",high_risk,", ",urgent,")
        (project / "outputs/exams.csv").write_text(text)
    elif change == "empty":
        (project / "outputs/exams.csv").write_text(",".join(EXAM_CSV_COLUMNS) + "\n")
    else:
        next((project / "overlays").iterdir()).write_bytes(b"not a zip")
    assert _report(imported, out, *extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not (project / "reports").exists()


def test_a_sparse_or_non_conformant_header_is_filed_with_the_attribute_empty(
        imported: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """De-identified data lacks Type 2 attributes, and real headers hold "2020-01-01" or sex "U":
    the objects are still written, those attributes empty, and pydicom's warnings (which quote the
    value) never reach the output."""
    sources = tmp_path / "dicom"
    for path in (imported / "dicom" / "test").rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        for keyword in ("PatientName", "PatientBirthDate", "AccessionNumber", "StudyID"):
            delattr(ds, keyword)
        with pytest.warns(UserWarning):
            ds.StudyDate = "2020-01-01"
        ds.PatientSex = "U"
        target = sources / path.relative_to(imported / "dicom" / "test")
        target.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(target)
    _project(imported, tmp_path, monkeypatch)
    assert main(["report", "--no-mlflow", "--mapping", str(imported / "mapping.csv"), "--dicom", str(sources),
                 "--overlays", "overlays", "--out", str(tmp_path / "results")]) == 0
    printed = capsys.readouterr()
    assert "2020-01-01" not in printed.out + printed.err
    for path in (tmp_path / "results").rglob("sr.dcm"):
        sr = pydicom.dcmread(path)
        assert (sr.StudyDate, sr.PatientSex, sr.PatientName) == ("", "", "") and sr.PatientID
