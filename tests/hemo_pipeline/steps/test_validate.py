"""`hemo validate`: each kind of bad input fails its own check, naming the offending item."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from hemo_pipeline.cli import main

SIZE = "64"


@pytest.fixture(autouse=True)
def _mlflow_store(sqlite_tracking_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation logs a run per call; keep those runs (and any outputs) out of the working tree."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_tracking_uri)
    monkeypatch.delenv("HEMO_PARENT_RUN_ID", raising=False)


def _validate(data: Path, reports: Path, *extra: str) -> int:
    return main(["validate", "--data", str(data), "--reports", str(reports), "--image-size", SIZE, *extra])


def _rows(data: Path) -> list[list[str]]:
    with (data / "train.csv").open() as handle:
        return list(csv.reader(handle))


def _write_rows(data: Path, rows: list[list[str]]) -> None:
    with (data / "train.csv").open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path).encode() + path.read_bytes())
    return digest.hexdigest()


def _fail_lines(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    out = capsys.readouterr().out
    return {line.split()[1].rstrip(":"): line for line in out.splitlines() if line.startswith("FAIL ")}


def test_good_data_passes_and_summarises(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _digest(tiny_data)
    assert _validate(tiny_data, tmp_path / "r") == 0
    out = capsys.readouterr().out
    assert out.startswith("OK ") and "4 train / 2 test patients" in out and "ich" in out
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["success"] is True and all(c["success"] for c in summary["checks"])
    assert (tmp_path / "r" / "data_docs" / "index.html").is_file()
    assert _digest(tiny_data) == before, "validation must not modify the data"


def test_wrong_header(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(data_copy)
    rows[0][2:4] = ["ivh", "ich"]  # swapped columns
    _write_rows(data_copy, rows)
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert "labels.columns" in fails and "dirname,ID,ivh,ich" in fails["labels.columns"]


def test_label_not_binary(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(data_copy)
    rows[5][4] = "2"  # sah
    _write_rows(data_copy, rows)
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert set(fails) == {"labels.sah.binary"}
    assert "1 of" in fails["labels.sah.binary"] and f"row 6 ({rows[5][0]}/{rows[5][1]})" in fails["labels.sah.binary"]


def test_missing_label(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(data_copy)
    rows[9][6] = ""  # edh
    _write_rows(data_copy, rows)
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert "labels.edh.not_missing" in fails and f"row 10 ({rows[9][0]}/{rows[9][1]})" in fails["labels.edh.not_missing"]


def test_duplicate_id(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(data_copy)
    rows.append(rows[3])
    _write_rows(data_copy, rows)
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert "labels.ID.unique" in fails and rows[3][1] in fails["labels.ID.unique"]
    assert "sequences.contiguous" in fails and "duplicate" in fails["sequences.contiguous"]


def test_id_hash_does_not_match_dirname(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(data_copy)
    rows[2][1] = "deadbeef00_1.jpg"
    _write_rows(data_copy, rows)
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert "labels.ID.matches_dirname" in fails and "deadbeef00_1.jpg" in fails["labels.ID.matches_dirname"]


def test_malformed_id(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(data_copy)
    rows[2][1] = "slice-one.png"
    _write_rows(data_copy, rows)
    assert _validate(data_copy, tmp_path / "r") == 1
    assert "slice-one.png" in _fail_lines(capsys)["labels.ID.format"]


def test_unsafe_path_is_reported_and_not_opened(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(data_copy)
    rows[4][0] = "../../etc"
    _write_rows(data_copy, rows)
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert "labels.safe_paths" in fails and "../../etc" in fails["labels.safe_paths"]
    assert "images.exist" not in fails  # the unsafe row is never turned into a path


def test_too_few_slices(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(data_copy)
    patient = rows[1][0]
    keep = [r for r in rows if r[0] != patient or int(r[1].split("_")[1].split(".")[0]) < 10]
    _write_rows(data_copy, keep)
    for image in (data_copy / "train" / patient).iterdir():
        if int(image.stem.split("_")[1]) >= 10:
            image.unlink()
    for mask in (data_copy / "masks" / patient).glob("*.png"):  # the cut slices' outlines go with them
        if int(mask.stem.split("_")[1]) >= 10:
            mask.unlink()
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert set(fails) == {"sequences.length"} and f"train/{patient} (10 slices)" in fails["sequences.length"]


def test_gap_in_sequence(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = _rows(data_copy)
    victim = rows[5]
    _write_rows(data_copy, [r for r in rows if r != victim])
    (data_copy / "train" / victim[0] / victim[1]).unlink()
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    k = int(victim[1].split("_")[1].split(".")[0])
    assert set(fails) == {"sequences.contiguous"} and f"missing k=[{k}]" in fails["sequences.contiguous"]


def test_missing_image(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirname, ident = _rows(data_copy)[7][:2]
    (data_copy / "train" / dirname / ident).unlink()
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert set(fails) == {"images.exist"} and f"train/{dirname}/{ident}" in fails["images.exist"]


def test_corrupt_image(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirname, ident = _rows(data_copy)[8][:2]
    (data_copy / "train" / dirname / ident).write_bytes(b"\xff\xd8not a jpeg")
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert set(fails) == {"images.decode"} and ident in fails["images.decode"]


def test_rgb_image(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dirname, ident = _rows(data_copy)[8][:2]
    path = data_copy / "train" / dirname / ident
    Image.open(path).convert("RGB").save(path, format="JPEG")
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert set(fails) == {"images.mode"} and ident in fails["images.mode"]


def test_wrong_size_in_test_split(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patient = sorted((data_copy / "test").iterdir())[0]
    path = sorted(patient.iterdir())[0]
    Image.open(path).resize((32, 32)).save(path, format="JPEG")
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert set(fails) == {"images.size"} and f"test/{patient.name}/{path.name}" in fails["images.size"]


def test_image_without_row(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patient = sorted((data_copy / "train").iterdir())[0]
    shutil.copy(sorted(patient.iterdir())[0], patient / "stray.jpg")
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert set(fails) == {"files.labelled"} and f"train/{patient.name}/stray.jpg" in fails["files.labelled"]


def test_test_split_gap(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    patient = sorted((data_copy / "test").iterdir())[1]
    (patient / f"{patient.name[3:]}_3.jpg").unlink()
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert set(fails) == {"sequences.contiguous"} and f"test/{patient.name} (missing k=[3])" in fails["sequences.contiguous"]


def test_missing_folder_and_labels_give_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _validate(tmp_path / "nope", tmp_path / "r") == 2
    assert "data folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert _validate(tmp_path / "empty", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.csv not found" in err


def test_validation_runs_are_logged_to_mlflow(data_copy: Path, tmp_path: Path, sqlite_tracking_uri: str) -> None:
    import mlflow

    rows = _rows(data_copy)
    rows[3][5] = "7"
    _write_rows(data_copy, rows)
    assert _validate(data_copy, tmp_path / "r") == 1
    mlflow.set_tracking_uri(sqlite_tracking_uri)
    run = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list",
                             order_by=["attributes.start_time DESC"], max_results=1)[0]
    assert run.info.status == "FAILED" and run.data.tags["hemo.failed_checks"] == "labels.sdh.binary"
    assert run.data.metrics["checks_failed"] == 1.0 and run.data.tags["hemo.step"] == "validate"


def test_failure_writes_report_with_examples(data_copy: Path, tmp_path: Path) -> None:
    rows = _rows(data_copy)
    rows[5][2] = "x"
    _write_rows(data_copy, rows)
    assert _validate(data_copy, tmp_path / "r") == 1
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    failed = [c for c in summary["checks"] if not c["success"]]
    assert [c["name"] for c in failed] == ["labels.ich.binary"] and failed[0]["failed"] == 1
    assert (tmp_path / "r" / "data_docs" / "index.html").is_file()


def test_series_index_problems_fail_their_checks(data_copy: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """series.csv (written by import-dicom) is checked when present: one scan stored twice, a row
    without a folder and a key that is not a key each fail one check, naming the row."""
    dirnames = sorted({row[0] for row in _rows(data_copy)[1:]})
    same = "a" * 64
    (data_copy / "series.csv").write_text("dirname,patient,pixels_sha256\n" + "\n".join([
        f"{dirnames[0]},P_1,{same}", f"{dirnames[1]},P_1,{same}", f"{dirnames[2]},Doe^John,",
        "ID_gone000000,P_2,"]) + "\n")
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert set(fails) == {"series.pixels.unique", "series.well_formed", "series.folder_exists"}, fails
    assert "series.csv row 3" in fails["series.pixels.unique"] and "row 4" in fails["series.well_formed"]
    assert "ID_gone000000" in fails["series.folder_exists"]


def test_good_data_without_a_series_index_runs_no_series_check(tiny_data: Path, tmp_path: Path) -> None:
    assert _validate(tiny_data, tmp_path / "r") == 0
    names = {c["name"] for c in json.loads((tmp_path / "r" / "summary.json").read_text())["checks"]}
    assert names and not any(name.startswith("series.") for name in names)


def test_subgroup_problems_fail_their_checks(data_copy: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """subgroups.csv (from import-dicom or synth) is checked with the reader's own rules: a value
    that would run as a spreadsheet formula, a folder listed twice and a row without a folder each
    fail one check, naming the row."""
    dirnames = sorted({row[0] for row in _rows(data_copy)[1:]})
    (data_copy / "subgroups.csv").write_text("dirname,scanner\n" + "\n".join([
        f"{dirnames[0]},GE", f"{dirnames[1]},=cmd|' /C calc'!A0", f"{dirnames[0]},Siemens",
        "ID_gone000000,GE"]) + "\n")
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert set(fails) == {"subgroups.well_formed", "subgroups.dirname.unique", "subgroups.folder_exists"}, fails
    assert "subgroups.csv row 3" in fails["subgroups.well_formed"] and "scanner must be" in fails["subgroups.well_formed"]
    assert dirnames[0] in fails["subgroups.dirname.unique"] and "ID_gone000000" in fails["subgroups.folder_exists"]


def test_the_phantoms_subgroups_pass(tiny_data: Path, tmp_path: Path) -> None:
    assert _validate(tiny_data, tmp_path / "r") == 0
    checks = {c["name"]: c for c in json.loads((tmp_path / "r" / "summary.json").read_text())["checks"]}
    assert checks["subgroups.well_formed"]["success"] and checks["subgroups.well_formed"]["total"] == 6


def test_a_subgroups_file_with_a_bad_header_and_no_rows_fails(data_copy: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """evaluate would refuse it: validate must not pass it."""
    (data_copy / "subgroups.csv").write_text("dirname,Scanner Name\n")
    assert _validate(data_copy, tmp_path / "r") == 1
    assert "subgroups.csv header" in _fail_lines(capsys)["subgroups.well_formed"]


def test_the_phantoms_lesion_masks_pass(tiny_data: Path, tmp_path: Path) -> None:
    assert _validate(tiny_data, tmp_path / "r") == 0
    checks = {c["name"]: c for c in json.loads((tmp_path / "r" / "summary.json").read_text())["checks"]}
    masks = len(list((tiny_data / "masks").rglob("*.png")))
    assert masks and all(checks[f"masks.{n}"]["success"] and checks[f"masks.{n}"]["total"] == masks
                         for n in ("well_formed", "labelled", "agree_with_labels"))


def test_lesion_mask_problems_fail_their_checks(data_copy: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A mask that is no bit-coded PNG, one for a slice without a label row and one outlining a
    class its slice is not labelled with each fail one check, naming the file."""
    rows = _rows(data_copy)
    header = rows[0]
    negative = next(r for r in rows[1:] if not any(r[header.index(c)] == "1" for c in ("ich", "ivh", "sah", "sdh", "edh")))
    dirname, stem = negative[0], negative[1].removesuffix(".jpg")
    folder = data_copy / "masks" / dirname
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("L", (64, 64), 1).save(folder / f"{stem}.png")  # ich outlined on a slice labelled with nothing
    Image.new("L", (64, 64), 40).save(folder / f"{stem.split('_')[0]}_999.png")  # bits beyond edh, no row
    Image.new("L", (64, 64), 2).save(folder / f"{stem.split('_')[0]}_998.png")  # no row for slice 998
    (folder / f"{stem.split('_')[0]}_997.png").symlink_to(folder / f"{stem}.png")  # a link, not a mask
    (data_copy / "masks" / ".DS_Store").write_bytes(b"\0")  # a desktop's litter: skipped, as in train/
    assert _validate(data_copy, tmp_path / "r") == 1
    fails = _fail_lines(capsys)
    assert {k for k in fails if k.startswith("masks.")} == {"masks.well_formed", "masks.labelled",
                                                            "masks.agree_with_labels"}, fails
    assert "_999.png" in fails["masks.well_formed"] and "_998.png" in fails["masks.labelled"]
    assert "_997.png" in fails["masks.well_formed"] and ".DS_Store" not in fails["masks.well_formed"]
    assert "masks.well_formed: 2 of " in fails["masks.well_formed"]
    assert f"masks/{dirname}/{stem}.png" in fails["masks.agree_with_labels"]
