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
from hemo_model.data.synth import render_slice, sample_patient, window
from hemo_model.data.synth_dicom import _uid, generate_dicom_dataset
from hemo_pipeline.cli import main
from tests.dicom_files import hu_volume, series_datasets, write

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
