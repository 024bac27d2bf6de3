"""Paths: names anchored at their real end, data/test held inside the data root, a slice cache
that trusts neither planted links nor a slice's size and mtime (issue 16, part 5).

Each test is the attack as tried against the code before the fix; the docstring says what it did there.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemo_model.data.cache import SliceCache
from hemo_model.data.images import read_pixels
from hemo_model.data.layout import DataError, is_safe_component, parse_slice_name, patient_hash
from hemo_model.data.patients import load_folder, load_split
from hemo_pipeline.cli import main

NEWLINE_NAMES = ["x_1.jpg\n", "abc_0.png\n", "ID_abc\n", "abc\n", "abc\r", "abc\n\n", "x_1.jpg\nID_evil"]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.fixture
def private_data(pipeline_data: Path, workdir: Path) -> Path:
    """A private copy of the tiny pipeline data in place of workdir's shared symlink."""
    (workdir / "data").unlink()
    shutil.copytree(pipeline_data, workdir / "data")
    return workdir / "data"


def _rows(data: Path) -> list[list[str]]:
    with (data / "train.csv").open(newline="") as handle:
        return list(csv.reader(handle))


def _write_rows(data: Path, rows: list[list[str]]) -> None:
    with (data / "train.csv").open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)  # a field with "\n" is quoted, as tools write it


def _validate_fails(capsys: pytest.CaptureFixture[str], *checks: str) -> str:
    assert main(["validate", "--data", "data", "--reports", "r", "--no-mlflow"]) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines and all(line.startswith("FAIL ") for line in lines), lines  # no name splits or forges a line
    for check in checks:
        assert any(line.startswith(f"FAIL {check}:") for line in lines), (check, lines)
    return captured.out


# --- names anchored at the real end -------------------------------------------------------------

@pytest.mark.parametrize("name", NEWLINE_NAMES + ["x_١.jpg", "x_２.jpg"])
def test_names_with_a_trailing_newline_or_foreign_digits_are_not_names(name: str) -> None:
    """Before: Python's `$` matched before a final newline, so "x_1.jpg\\n" parsed as slice 1,
    "ID_abc\\n" as patient abc and "abc\\n" was a safe path component; `\\d` took "١" as 1."""
    assert parse_slice_name(name) is None
    assert patient_hash(name) is None
    if "\n" in name or "\r" in name:
        assert not is_safe_component(name)


def test_the_plain_names_still_parse() -> None:
    assert parse_slice_name("abc_12.jpg").k == 12 and parse_slice_name("abc_0.png").hash == "abc"
    assert patient_hash("ID_abc") == "abc" and is_safe_component("ID_abc") and is_safe_component("abc_1.jpg")


@pytest.mark.parametrize("slice_id", ["abc_1.jpg\n", "abc_1_ich\n", "abc_1", "abc_1.jpgx", "abc_1_ichx", "abc_1_any"])
def test_merge_scores_refuses_slice_ids_that_only_start_well(slice_id: str) -> None:
    """Before: SLICE_KEY matched a prefix, so any tail after <hash>_<k> was merged as is."""
    from hemo_pipeline.services.errors import UserError
    from hemo_pipeline.steps.merge_scores import _order

    with pytest.raises(UserError, match="unexpected slice id"):
        _order(slice_id)
    assert _order("abc_1.jpg") == ("abc", 1, -1) and _order("abc_1_sah") == ("abc", 1, 2)


def test_a_label_id_with_a_newline_is_refused_by_validation_and_the_loader(
        private_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: validation passed (exit 0) and `hemo train` read the file "<hash>_0.jpg\\n"."""
    rows = _rows(private_data)
    dirname, ident = rows[1][0], rows[1][1]
    image = private_data / "train" / dirname / ident
    image.rename(image.with_name(ident + "\n"))
    rows[1][1] = ident + "\n"
    _write_rows(private_data, rows)
    out = _validate_fails(capsys, "labels.safe_paths", "labels.ID.format")
    assert repr(ident + "\n") in out
    assert main(["train", "--max-steps", "1", "--device", "cpu"]) == 2
    error = _one_error_line(capsys)
    assert "bad ID" in error and repr(ident + "\n") in error


def test_a_patient_folder_with_a_newline_is_refused_by_validation_and_the_loader(
        private_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: "ID_<hash>\\n" passed safe_paths and matches_dirname; validation exit 0, train read it."""
    rows = _rows(private_data)
    dirname = rows[1][0]
    (private_data / "train" / dirname).rename(private_data / "train" / (dirname + "\n"))
    _write_rows(private_data, [rows[0]] + [[r[0] + "\n" if r[0] == dirname else r[0], *r[1:]] for r in rows[1:]])
    _validate_fails(capsys, "labels.safe_paths", "labels.ID.matches_dirname")
    assert main(["train", "--max-steps", "1", "--device", "cpu"]) == 2
    error = _one_error_line(capsys)
    assert repr(dirname + "\n") in error and "not a plain file or folder name" in error


def test_newline_names_in_the_test_folder_are_refused_by_validation_and_never_scored(
        private_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: validation passed and `hemo score` read test/ID_<hash>\\n/ and "<hash>_0.jpg\\n" (they went
    into predictions.csv as rows whose ID holds a newline)."""
    test = private_data / "test"
    first, second = sorted(p for p in test.iterdir())
    slice_file = sorted(second.iterdir())[0]
    slice_file.rename(slice_file.with_name(slice_file.name + "\n"))
    _validate_fails(capsys, "files.labelled")
    assert all(not p.name.endswith("\n") for patient in load_folder(test) for p in patient.paths)

    first.rename(first.with_name(first.name + "\n"))
    _validate_fails(capsys, "files.labelled")
    with pytest.raises(DataError, match="not a plain file or folder name"):
        load_folder(test)
    assert main(["score", "--model", "x.pt", "--device", "cpu"]) == 2
    error = _one_error_line(capsys)
    assert "not a plain file or folder name" in error and repr(first.name + "\n") in error


# --- data/test held inside the data root --------------------------------------------------------

@pytest.fixture
def test_linked_out(private_data: Path, tmp_path: Path) -> Path:
    """data/test replaced by a symlink to a folder outside the data folder (the folder returned)."""
    outside = tmp_path / "elsewhere"
    shutil.move(private_data / "test", outside)
    (private_data / "test").symlink_to(outside, target_is_directory=True)
    return outside


def test_data_test_linked_outside_is_refused_by_score(test_linked_out: Path, workdir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Before: validation flagged it, but `hemo score` scored the outside folder (it got as far as
    loading the model: "x.pt does not exist")."""
    assert main(["validate", "--data", "data", "--reports", "r", "--no-mlflow"]) == 1
    assert "FAIL images.inside_root" in capsys.readouterr().out
    for data in ("data/test", str(workdir / "data" / "test"), "data/../data/test"):  # runners pass it absolute
        args = ["score", "--model", "x.pt", "--device", "cpu"] + (["--data", data] if data != "data/test" else [])
        assert main(args) == 2
        error = _one_error_line(capsys)
        assert f"{data} is under the data folder data but resolves to {test_linked_out.resolve()}" in error, error
        assert "x.pt" not in error  # refused before any model work
    assert not (workdir / "outputs").exists()


def test_dotdot_through_a_linked_subfolder_is_judged_by_where_it_leads(private_data: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """data/sub/../test names data/test, but with data/sub a link the OS opens <link target>/../test."""
    (tmp_path / "decoy" / "x").mkdir(parents=True)
    shutil.copytree(private_data / "test", tmp_path / "decoy" / "test")
    (private_data / "sub").symlink_to(tmp_path / "decoy" / "x", target_is_directory=True)
    assert main(["score", "--model", "x.pt", "--device", "cpu", "--data", "data/sub/../test"]) == 2
    assert f"resolves to {(tmp_path / 'decoy' / 'test').resolve()}" in _one_error_line(capsys)


def test_a_folder_outside_the_data_root_given_explicitly_is_the_users_choice(
        test_linked_out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--model", "x.pt", "--device", "cpu", "--data", str(test_linked_out)]) == 2
    assert "x.pt does not exist" in _one_error_line(capsys)  # past the data checks, stopped at the model


def test_load_split_keeps_test_inside_the_root(test_linked_out: Path, private_data: Path) -> None:
    with pytest.raises(DataError, match="resolves to"):
        load_split(private_data, "test")
    assert len(load_folder(test_linked_out)) == 2


def test_a_symlinked_data_root_is_still_fine(workdir: Path, pipeline_data: Path) -> None:
    """workdir's data/ is itself a symlink to the shared data set: what counts is the real root."""
    assert (workdir / "data").is_symlink()
    assert len(load_folder(Path("data/test"), data_root=Path("data"))) == 2


# --- the slice cache on disk --------------------------------------------------------------------

@pytest.fixture
def slices(data_copy: Path) -> list[Path]:
    return list(load_split(data_copy, "train")[0].paths[:6])


def _fresh(paths: list[Path], size: int = 32) -> np.ndarray:
    return np.stack([read_pixels(p, size)[0] for p in paths])


def _cache_file(folder: Path, paths: list[Path]) -> Path:
    """The name the cache of ``paths`` at 32 px gets (built once, then removed)."""
    SliceCache.build(paths, 32, folder=folder)
    (cache,) = folder.glob("slices_*_1x32.u8")
    cache.unlink()
    return cache


def test_a_symlink_planted_at_the_cache_name_is_neither_read_nor_written_through(
        slices: list[Path], tmp_path: Path) -> None:
    """Before: the target was opened through the link (is_file follows it): the victim file's
    bytes were served as pixels."""
    folder = tmp_path / "cache"
    target = _cache_file(folder, slices)
    victim = tmp_path / "victim.bin"
    planted = bytes(range(256)) * (len(slices) * 32 * 32 // 256)
    victim.write_bytes(planted)
    target.symlink_to(victim)
    cache = SliceCache.build(slices, 32, folder=folder)
    assert np.array_equal(np.asarray(cache.array)[:, 0], _fresh(slices))
    assert victim.read_bytes() == planted
    assert not target.is_symlink() and target.is_file() and target.stat().st_mode & 0o077 == 0


def test_a_symlink_planted_at_the_old_partial_name_is_not_written_through(slices: list[Path], tmp_path: Path) -> None:
    """Before: the cache was written to the predictable <name>.partial, through a planted link into
    any file the user can write."""
    folder = tmp_path / "cache"
    target = _cache_file(folder, slices)
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    target.with_suffix(".partial").symlink_to(victim)
    cache = SliceCache.build(slices, 32, folder=folder)
    assert victim.read_bytes() == b"precious\n"
    assert np.array_equal(np.asarray(cache.array)[:, 0], _fresh(slices))
    assert sorted(p.name for p in folder.iterdir()) == sorted([target.name, target.with_suffix(".partial").name])


def _same_size_other_pixels(path: Path) -> None:
    """Rewrite ``path`` in place with other pixels, the same byte size and the same mtime."""
    before = path.stat()
    image = Image.new("L", Image.open(path).size, 255)
    image.paste(0, (0, 0, 16, 16))
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    data = buffer.getvalue()
    assert len(data) <= before.st_size
    with path.open("r+b") as handle:  # the same inode: only the ctime tells
        handle.write(data + b"\0" * (before.st_size - len(data)))  # bytes after the JPEG end are ignored
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (before.st_size, before.st_mtime_ns, before.st_ino)


def test_a_slice_rewritten_with_its_old_size_and_mtime_rebuilds_the_cache(slices: list[Path], tmp_path: Path) -> None:
    """Before: the key was path + size + mtime, all kept equal: the old pixels were served."""
    folder = tmp_path / "cache"
    old = np.asarray(SliceCache.build(slices, 32, folder=folder).array).copy()
    _same_size_other_pixels(slices[2])
    new = _fresh(slices)
    assert not np.array_equal(new[2], old[2, 0])
    cache = SliceCache.build(slices, 32, folder=folder)
    assert np.array_equal(np.asarray(cache.array)[:, 0], new)


@pytest.mark.parametrize("tamper", ["group_writable", "other_owner", "wrong_size", "directory", "fifo"])
def test_an_untrusted_cache_file_is_rebuilt_and_the_reason_logged_once(
        slices: list[Path], tmp_path: Path, tamper: str, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Before: any file of the right size at the cache name was used, whoever could write it."""
    folder = tmp_path / "cache"
    SliceCache.build(slices, 32, folder=folder)
    (target,) = folder.glob("slices_*.u8")
    if tamper in ("group_writable", "other_owner"):
        target.write_bytes(b"\0" * target.stat().st_size)  # forged pixels of the right size
        if tamper == "group_writable":
            target.chmod(0o666)
        else:
            real = os.geteuid()
            monkeypatch.setattr(os, "geteuid", lambda: real + 1)
    elif tamper == "wrong_size":
        target.write_bytes(b"\0" * 10)
    elif tamper == "directory":
        target.unlink()
        target.mkdir()
    else:
        target.unlink()
        os.mkfifo(target)  # opening it for reading must not hang
    caplog.set_level(logging.WARNING, logger="hemo_model.data.cache")
    cache = SliceCache.build(slices, 32, folder=folder)
    assert np.array_equal(np.asarray(cache.array)[:, 0], _fresh(slices))
    warnings = [r.getMessage() for r in caplog.records if r.name == "hemo_model.data.cache"]
    assert len(warnings) == (2 if tamper == "directory" else 1), warnings  # a folder also cannot be replaced
    assert "not reused" in warnings[0] and target.name in warnings[0]
    assert not any(str(p.parent) in w for w in warnings for p in slices)  # no slice path in the log
    assert [p for p in folder.iterdir() if p.name.endswith(".partial")] == []


def test_an_interrupted_cache_build_leaves_no_partial_file(slices: list[Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from hemo_model.data import cache

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache, "read_pixels", interrupted)
    with pytest.raises(KeyboardInterrupt):
        SliceCache.build(slices, 32, folder=tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []
