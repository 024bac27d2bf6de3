"""`hemo import-dicom` from a folder: the layout it writes (valid for `hemo validate`), z order and
labels against the phantom's truth, exact windows, files without metadata, and the refusals that
leave the data folder as it was."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemo_model.data.dicom import read_hu, series_key, windowed
from hemo_model.data.subgroups import thickness_band
from hemo_model.data.synth import render_slice, sample_patient, window
from hemo_model.data.synth_dicom import SLICE_SPACING_MM, _uid, generate_dicom_dataset
from hemo_pipeline.cli import main
from tests.dicom_files import hu_volume, series_datasets, uid, write

SEED, SIZE, SALT = 3, 64, "test-salt"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 train / 1 test phantom patients as DICOM, flat and opaque names, InstanceNumber shuffled."""
    root = tmp_path_factory.mktemp("phantom-dicom")
    generate_dicom_dataset(root, train_patients=3, test_patients=1, image_size=SIZE, seed=SEED, shuffle_names=True)
    return root


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEMO_DICOM_SALT", SALT)
    return tmp_path


def _import(*args: str) -> int:
    return main(["import-dicom", "--no-mlflow", *args])


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_imports_the_phantom_in_z_order_with_its_labels_and_passes_validation(
        phantom: Path, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _import("--dicom", str(phantom / "train"), "--labels", str(phantom / "train_labels.csv"),
                   "--out", "data", "--mapping", "mapping.csv") == 0
    assert _import("--dicom", str(phantom / "test"), "--out", "data") == 0
    out = capsys.readouterr().out
    assert "import-dicom: 3 series -> data/train (brain window, JPEG)" in out and "skipped: localizer 3" in out
    assert main(["validate", "--data", "data", "--no-mlflow", "--reports", "val"]) == 0

    with open("data/train.csv") as handle:
        rows = list(csv.DictReader(handle))
    for index in range(3):
        patient = sample_patient(SEED, "train", index)
        key = series_key(_uid(SEED, "train", index, "series"), SALT)
        mine = [r for r in rows if r["dirname"] == f"ID_{key}"]
        assert [r["ID"] for r in mine] == [f"{key}_{k}.jpg" for k in range(patient.n_slices)]
        for k, row in enumerate(mine):
            truth = render_slice(patient, k, SIZE)
            assert [int(row[c]) for c in ("ich", "ivh", "sah", "sdh", "edh")] == list(truth.labels.values())
            pixels = np.asarray(Image.open(f"data/train/ID_{key}/{row['ID']}"), dtype=np.float64)
            centre = np.abs(pixels - window(truth.hu)).mean()
            assert centre < 3.0  # JPEG q95 of the same slice (the padding outside the disc is air: small)
            if 0 < k < patient.n_slices - 1:  # and it is this slice, not a neighbour
                assert centre < min(np.abs(pixels - window(render_slice(patient, j, SIZE).hu)).mean()
                                    for j in (k - 1, k + 1))
    with open("mapping.csv") as handle:
        mapping = list(csv.DictReader(handle))
    assert len(mapping) == len(rows) and mapping[0]["SOPInstanceUID"].startswith("1.2.826")
    # subgroups from the headers, in closed vocabularies: the phantom scanner, 5 mm, 64 px matrix
    expected = {f"ID_{series_key(_uid(SEED, split, i, 'series'), SALT)}": sample_patient(SEED, split, i).scanner
                for split, n in (("train", 3), ("test", 1)) for i in range(n)}
    with open("data/subgroups.csv") as handle:
        groups = list(csv.DictReader(handle))
    assert {g["dirname"]: g["scanner"] for g in groups} == expected
    assert {(g["thickness"], g["matrix"]) for g in groups} == {(thickness_band(SLICE_SPACING_MM), "<512")}
    report = json.loads(Path("reports/import.json").read_text())
    assert report["series_kept"] == 1 and report["split"] == "test" and report["files_skipped"] == {"localizer": 1}


def test_three_windows_are_lossless_pngs_exact_to_the_window_quantisation(phantom: Path, project: Path) -> None:
    assert _import("--dicom", str(phantom / "test"), "--out", "data", "--windows", "brain,subdural,bone",
                   "--mapping", "m.csv") == 0
    with open("m.csv") as handle:
        rows = list(csv.DictReader(handle))
    sources = {}
    for path in (phantom / "test").iterdir():
        import pydicom

        sources[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)] = path
    for row in rows:
        png = Image.open(f"data/test/{row['dirname']}/{row['ID']}")
        assert png.format == "PNG" and png.mode == "RGB" and row["ID"].endswith(".png")
        expected = windowed(read_hu(sources[row["SOPInstanceUID"]]), ["brain", "subdural", "bone"])
        assert np.array_equal(np.asarray(png), expected)


def _jpeg_markers(data: bytes) -> list[int]:
    markers, at = [], 2
    while at < len(data) and data[at] == 0xFF and data[at + 1] != 0xDA:
        markers.append(data[at + 1])
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    return markers


def _png_chunks(data: bytes) -> list[bytes]:
    chunks, at = [], 8
    while at < len(data):
        length = int.from_bytes(data[at:at + 4], "big")
        chunks.append(data[at + 4:at + 8])
        at += 12 + length
    return chunks


def test_slice_files_carry_no_metadata(phantom: Path, project: Path) -> None:
    assert _import("--dicom", str(phantom / "test"), "--out", "gray") == 0
    assert _import("--dicom", str(phantom / "test"), "--out", "rgb", "--windows", "brain,subdural,bone") == 0
    for path in Path("gray").rglob("*.jpg"):
        markers = _jpeg_markers(path.read_bytes())
        assert 0xE0 in markers and not {0xE1, 0xE2, 0xED, 0xFE} & set(markers), markers  # JFIF only: no EXIF/XMP/IPTC/COM
    for path in Path("rgb").rglob("*.png"):
        assert set(_png_chunks(path.read_bytes())) == {b"IHDR", b"IDAT", b"IEND"}


def test_second_import_of_the_same_series_is_refused_and_changes_nothing(
        phantom: Path, project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ("--dicom", str(phantom / "train"), "--labels", str(phantom / "train_labels.csv"), "--out", "data")
    assert _import(*args) == 0
    before = _tree(Path("data"))
    capsys.readouterr()
    assert _import(*args) == 2
    assert "already exists in the data folder" in _error(capsys)
    assert _tree(Path("data")) == before
    assert [p.name for p in project.iterdir() if p.name.startswith(".data-import-")] == []


def test_an_interrupted_import_leaves_the_data_folder_as_it_was(phantom: Path, project: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert _import("--dicom", str(phantom / "test"), "--out", "data") == 0
    before = _tree(Path("data"))
    from hemo_pipeline.services import dicom_output

    written = []

    def failing_save(stem: Path, pixels: np.ndarray) -> str:
        if len(written) == 40:
            raise KeyboardInterrupt
        written.append(stem)
        return original(stem, pixels)

    original = dicom_output.save_slice
    monkeypatch.setattr(dicom_output, "save_slice", failing_save)
    assert _import("--dicom", str(phantom / "train"), "--labels", str(phantom / "train_labels.csv"),
                   "--out", "data") == 130
    assert len(written) == 40 and _tree(Path("data")) == before
    assert [p.name for p in project.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("args, message", [
    (["--mapping", "data/map.csv"], "--mapping data/map.csv is inside the data folder"),
    (["--mapping", "reports/map.csv"], "is inside the reports folder"),
    (["--split", "train"], "--split train needs --labels"),
    (["--windows", "brain,bone"], "give one window (a gray JPEG) or three"),
    (["--windows", "lung"], "give one window"),
    (["--since", "20240101"], "use them with --dicomweb"),
])
def test_bad_arguments_give_one_line_and_write_nothing(phantom: Path, project: Path, args: list[str], message: str,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert _import("--dicom", str(phantom / "test"), "--out", "data", *args) == 2
    assert message in _error(capsys)
    assert not Path("data").exists()


def test_salt_file_is_made_outside_the_data_and_refused_inside(phantom: Path, project: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HEMO_DICOM_SALT")
    assert _import("--dicom", str(phantom / "test"), "--out", "data", "--salt-file", "data/salt") == 2
    assert "salt file data/salt is inside the data folder" in _error(capsys)
    assert _import("--dicom", str(phantom / "test"), "--out", "data") == 0
    salt = Path(".hemo-dicom-salt")
    assert salt.stat().st_mode & 0o077 == 0 and len(salt.read_text().strip()) == 64
    assert salt.read_text().strip() not in "".join(str(v) for v in _tree(Path("data")).values())
    assert ".hemo-dicom-salt (new)" in capsys.readouterr().out


def test_a_lost_salt_file_is_not_silently_replaced_for_an_existing_data_set(
        phantom: Path, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A new salt would rename every series: re-imported training scans would land in new roles
    under names no version recorded. With patients in --out the import refuses instead."""
    monkeypatch.delenv("HEMO_DICOM_SALT")
    assert _import("--dicom", str(phantom / "test"), "--out", "data") == 0
    before = _tree(Path("data"))
    Path(".hemo-dicom-salt").unlink()
    capsys.readouterr()
    assert _import("--dicom", str(phantom / "test"), "--out", "data") == 2
    err = _error(capsys)
    assert "salt file .hemo-dicom-salt not found, but the data folder already holds" in err and "--new-salt" in err
    assert not Path(".hemo-dicom-salt").exists() and _tree(Path("data")) == before  # nothing made, nothing moved
    assert _import("--dicom", str(phantom / "test"), "--out", "elsewhere") == 0  # an empty folder gets a new salt
    assert Path(".hemo-dicom-salt").is_file()


def test_irregular_series_are_reported_or_rejected(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hu = hu_volume(24)
    write(series_datasets(hu, name="regular"), Path("dicom/a"))
    write(series_datasets(hu[:23], name="gap", positions=[2.5 * z for z in range(24) if z != 10]), Path("dicom/b"))
    assert _import("--dicom", "dicom", "--out", "kept") == 0
    assert "irregular: gap 1" in capsys.readouterr().out and len(list(Path("kept/test").iterdir())) == 2
    assert _import("--dicom", "dicom", "--out", "strict", "--reject-irregular") == 0
    assert "skipped: gap 1" in capsys.readouterr().out and len(list(Path("strict/test").iterdir())) == 1
    assert _import("--dicom", "dicom/b", "--out", "none", "--reject-irregular") == 2
    assert "no series to import" in _error(capsys) and not Path("none").exists()


def test_missing_input_folder_is_one_line_and_makes_no_salt(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HEMO_DICOM_SALT")
    assert _import("--dicom", "nowhere", "--out", "data") == 2
    assert "--dicom nowhere is not a folder" in _error(capsys)
    assert not Path(".hemo-dicom-salt").exists() and not Path("data").exists()


@pytest.mark.parametrize("args, message", [
    (["--max-series", "0"], "--max-series 0: give at least 1"),
    (["--max-response-bytes", "lots"], "--max-response-bytes 'lots': give a size in bytes, or with KiB/MiB/GiB"),
    (["--study", "1.2.3/../../x"], "--study #1 is not a DICOM UID"),
    (["--study", "1.2.3", "--study", "1.2.3?x=1"], "--study #2 is not a DICOM UID"),
])
def test_bad_dicomweb_limits_give_one_line_before_any_request(project: Path, args: list[str], message: str,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert _import("--dicomweb", "https://pacs.invalid/dicom-web", "--out", "data", *args,
                   *([] if "--study" in args else ["--since", "20240101"])) == 2
    error = _error(capsys)
    assert message in error and "1.2.3" not in error.replace("--study #", "")
    assert not Path("data").exists()


def test_max_response_bytes_falls_back_on_the_environment(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from hemo_pipeline.services.dicomweb import DEFAULT_MAX_BYTES, limits_from

    assert limits_from(None, None, False).max_response_bytes == DEFAULT_MAX_BYTES == 2 << 30
    monkeypatch.setenv("HEMO_DICOMWEB_MAX_BYTES", "512MiB")
    assert limits_from(None, None, False).max_response_bytes == 512 << 20
    assert limits_from(None, "3G", True).max_response_bytes == 3 << 30  # the flag wins
    monkeypatch.setenv("HEMO_DICOMWEB_MAX_BYTES", "-1")
    assert _import("--dicomweb", "https://pacs.invalid/dw", "--since", "20240101", "--out", "data") == 2
    assert "HEMO_DICOMWEB_MAX_BYTES '-1': give a size" in _error(capsys)


def _series_csv(path: Path = Path("data/series.csv")) -> dict[str, dict[str, str]]:
    with path.open() as handle:
        return {row["dirname"]: row for row in csv.DictReader(handle)}


def test_every_scan_of_a_patient_gets_one_key_and_one_role(project: Path, tmp_path_factory: pytest.TempPathFactory,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Six studies, the last two follow-ups of the first two patients: four keys, and both scans of
    a patient in the same role under any split salt; no PatientID reaches what is written."""
    root = tmp_path_factory.mktemp("followups")
    generate_dicom_dataset(root, train_patients=6, test_patients=0, image_size=SIZE, seed=SEED, followups=2)
    assert _import("--dicom", str(root / "train"), "--labels", str(root / "train_labels.csv"), "--out", "data",
                   "--mapping", "mapping.csv") == 0
    assert "patients: 4 among the series kept" in capsys.readouterr().out
    with open("mapping.csv") as handle:
        mapping = list(csv.DictReader(handle))
    study_of = {_uid(SEED, "train", i, "series"): i for i in range(6)}
    index_of = {row["dirname"]: study_of[row["SeriesInstanceUID"]] for row in mapping}
    rows = _series_csv()
    assert sorted(index_of) == sorted(rows) and len(rows) == 6
    key = {index_of[d]: row["patient"] for d, row in rows.items()}
    assert key[0] == key[4] and key[1] == key[5] and len(set(key.values())) == 4
    assert all(row["patient"] == next(r["patient"] for r in mapping if r["dirname"] == d) for d, row in rows.items())
    written = (Path("data/series.csv").read_text() + Path("data/train.csv").read_text()
               + json.dumps(json.loads(Path("reports/import.json").read_text())))
    assert "PHX" not in written and "PHX" not in Path("mapping.csv").read_text()  # the phantom's PatientIDs
    folder_of = {i: d for d, i in index_of.items()}
    for salt in ("s1", "s2", "s3", "s4", "s5", "s6"):
        assert main(["split", "--data", "data", "--out", "split.json", "--set", f"split.salt={salt}",
                     "--set", "split.gate_fraction=0.4", "--set", "split.val_fraction=0.3"]) == 0
        roles = json.loads(Path("split.json").read_text())["roles"]
        assert roles[folder_of[0]] == roles[folder_of[4]] and roles[folder_of[1]] == roles[folder_of[5]]
    assert "split of 4 patients (6 scans" in capsys.readouterr().out
    assert main(["validate", "--data", "data", "--no-mlflow", "--reports", "val"]) == 0
    checks = {c["name"]: c for c in json.loads(Path("val/summary.json").read_text())["checks"]}
    assert checks["series.pixels.unique"]["success"] and checks["series.pixels.unique"]["total"] == 6


def test_a_reimport_under_another_salt_is_recognised_by_its_pixels(
        phantom: Path, project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Another salt renames every series, so the name check cannot see the re-import; the pixels
    can. Nothing is written."""
    args = ("--dicom", str(phantom / "train"), "--labels", str(phantom / "train_labels.csv"), "--out", "data")
    assert _import(*args) == 0
    before = _tree(Path("data"))
    monkeypatch.setenv("HEMO_DICOM_SALT", "another-salt")
    capsys.readouterr()
    assert _import(*args) == 2
    err = _error(capsys)
    assert "has the same pixels as ID_" in err and "already in the data folder under another name" in err
    assert _tree(Path("data")) == before


def test_scans_without_patient_id_are_their_own_patients_and_a_double_is_written_once(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hu = hu_volume(24)
    write(series_datasets(hu, name="anonymous", patient_id=""), Path("dicom/a"))
    write(series_datasets(hu, name="resent"), Path("dicom/b"))  # the same pixels under another SeriesInstanceUID
    write(series_datasets(hu_volume(24, seed=1), name="other", patient_id=""), Path("dicom/c"))
    assert _import("--dicom", "dicom", "--out", "data") == 0
    out = capsys.readouterr().out
    assert "same_pixels_as_another_series 1" in out and "1 series without PatientID are each their own patient" in out
    rows = _series_csv()
    assert len(rows) == 2 and len({row["pixels_sha256"] for row in rows.values()}) == 2
    resent = f"ID_{series_key(uid('resent', 'series'), SALT)}"  # the copy with a PatientID is the one kept
    assert set(rows) == {resent, f"ID_{series_key(uid('other', 'series'), SALT)}"}
    assert rows[resent]["patient"].startswith("P_") and [r["patient"] for d, r in rows.items() if d != resent] == [
        f"ID_{series_key(uid('other', 'series'), SALT)}"]


def test_a_removed_series_can_come_back_and_unkeyed_folders_are_named(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The refusal says to remove a patient's folder and rows; a series.csv row left behind does not
    block its re-import. Folders without a patient key (an earlier release's import) are warned of."""
    write(series_datasets(hu_volume(24), name="first", patient_id="A-1"), Path("dicom/a"))
    write(series_datasets(hu_volume(24, seed=1), name="second", patient_id="B-2"), Path("dicom/b"))
    write(series_datasets(hu_volume(24, seed=2), name="third", patient_id="C-3"), Path("dicom/c"))
    assert _import("--dicom", "dicom/a", "--out", "data") == 0
    assert _import("--dicom", "dicom/b", "--out", "data") == 0
    first = f"ID_{series_key(uid('first', 'series'), SALT)}"
    import shutil

    shutil.rmtree(Path("data/test") / first)  # series.csv keeps its row
    capsys.readouterr()
    assert _import("--dicom", "dicom/a", "--out", "data") == 0
    assert first in _series_csv() and len(_series_csv()) == 2
    assert "warning" not in capsys.readouterr().out
    Path("data/series.csv").unlink()  # as if both came from an earlier release
    assert _import("--dicom", "dicom/c", "--out", "data") == 0
    out = capsys.readouterr().out
    assert "warning: 2 folders already in the data folder have no patient key" in out
    assert len(_series_csv()) == 1


def test_a_series_of_two_patients_is_left_out(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    datasets = series_datasets(hu_volume(24), name="merged", patient_id="A-1")
    datasets[5].PatientID = "B-2"  # an upstream merge error: two people under one SeriesInstanceUID
    write(datasets, Path("dicom/m"))
    write(series_datasets(hu_volume(24, seed=1), name="fine", patient_id="C-3"), Path("dicom/f"))
    assert _import("--dicom", "dicom", "--out", "data") == 0
    assert "skipped: mixed_patient 1" in capsys.readouterr().out and len(_series_csv()) == 1
