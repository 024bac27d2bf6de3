"""Patient data and hostile files in a DICOM import (issue 16, part 7, and the pixel budget of part 3).

Each test is one attack on ``hemo import-dicom`` from a folder, run in-process through
``hemo_pipeline.cli.main``. On the code before the fix: a file that could not be read stopped the
import with its path (and so the patient's name of the export folder) in the message, with exit 3;
series marked BurnedInAnnotation YES were imported; the UID mapping existed with the umask's mode
until a ``chmod`` after the rename; a header claiming 60000 x 60000 pixels went on to be decoded.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
from pathlib import Path

import pytest

from hemo_pipeline.cli import main
from tests.dicom_files import hu_volume, series_datasets, write

PATIENT = "Doe^Jane_19500101"
"""An export folder named after the patient, as PACS exports do."""
NEEDLES = ("Doe", "Jane", "19500101")


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HEMO_DICOM_SALT", "phi-security")
    return tmp_path


def _import(*args: str) -> int:
    return main(["import-dicom", "--no-mlflow", *args])


def _report() -> dict:
    return json.loads(Path("reports/import.json").read_text())


def _deny(monkeypatch: pytest.MonkeyPatch, locked: Path) -> None:
    """Make everything under ``locked`` unreadable as a folder with mode r-- (no search bit) is to
    its owner: its names can be listed, but stat() and open() of them fail with EACCES, the error
    naming the path. Done with patches because these tests run as root, whom modes do not stop."""
    prefix = str(locked) + os.sep
    real_stat, real_open, real_io_open = os.stat, builtins.open, io.open

    def denied(path: object) -> bool:
        return isinstance(path, (str, os.PathLike)) and os.path.abspath(path).startswith(prefix)  # type: ignore[arg-type]

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if denied(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    def opener(real):  # type: ignore[no-untyped-def]
        def open_(file: object, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
            if denied(file):
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))  # type: ignore[arg-type]
            return real(file, *args, **kwargs)
        return open_

    monkeypatch.setattr(os, "stat", stat)
    monkeypatch.setattr(builtins, "open", opener(real_open))
    monkeypatch.setattr(io, "open", opener(real_io_open))


def test_an_unreadable_file_in_a_patient_named_folder_is_counted_never_named(
        project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: 'error: I/O error (.../Doe^Jane_19500101/locked/IM0001): Permission denied; ...', exit 3."""
    export = project / "export" / PATIENT
    write(series_datasets(hu_volume(24), name="readable"), export / "CT")
    (export / "CT" / "IM_corrupt").write_bytes(b"\x00" * 128 + b"DICM" + b"\xff" * 64)
    (export / "notes.txt").write_text(f"patient {PATIENT}")
    locked = export / "locked"
    write(series_datasets(hu_volume(3), name="locked"), locked, ["IM0001", "IM0002", "IM0003"])
    with pytest.MonkeyPatch.context() as denied:  # then read what was written with the real os.stat/open
        _deny(denied, locked)
        assert _import("--dicom", "export", "--out", "data") == 0
    captured = capsys.readouterr()
    assert "files: 29 read, 24 used; skipped: not_dicom 1, unreadable 4" in captured.out
    assert _report()["files_skipped"] == {"not_dicom": 1, "unreadable": 4} and _report()["series_kept"] == 1
    written = b"".join(p.read_bytes() for p in project.rglob("*") if p.is_file() and "export" not in p.parts)
    for needle in NEEDLES:
        assert needle not in captured.out + captured.err and needle.encode() not in written


def test_an_unlistable_folder_is_counted_never_named(project: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Before: os.walk skipped it silently (the import looked complete)."""
    export = project / "export"
    write(series_datasets(hu_volume(24), name="readable"), export / "ok")
    hidden = export / PATIENT
    write(series_datasets(hu_volume(3), name="hidden"), hidden)
    real_scandir = os.scandir

    def scandir(path: object = ".") -> object:
        if not isinstance(path, int) and os.path.abspath(path) == str(hidden):  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    assert _import("--dicom", "export", "--out", "data") == 0
    captured = capsys.readouterr()
    assert "skipped: unreadable 1" in captured.out
    assert not any(n in captured.out + captured.err for n in NEEDLES)


def test_burned_in_annotation_series_are_skipped_and_counted(project: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Before: all three series were imported (the attribute was never read)."""
    one_yes = series_datasets(hu_volume(24), name="burned")
    one_yes[7].BurnedInAnnotation = "YES"  # one instance of the series is enough
    all_no = series_datasets(hu_volume(24, seed=1), name="clean")  # other pixels: not a re-sent copy of "burned"
    for ds in all_no:
        ds.BurnedInAnnotation = "NO"
    missing = series_datasets(hu_volume(24, seed=2), name="unmarked")
    scout_yes = series_datasets(hu_volume(25), name="scouted")
    scout_yes[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]  # a file not used as a slice still counts
    scout_yes[0].BurnedInAnnotation = "YES"
    for i, datasets in enumerate((one_yes, all_no, missing, scout_yes)):
        write(datasets, project / "dicom" / str(i))

    assert _import("--dicom", "dicom", "--out", "data") == 0
    out = capsys.readouterr().out
    assert "series: 4 found, 2 kept; skipped: burned_in_annotation 2" in out
    assert _report()["series_skipped"] == {"burned_in_annotation": 2}
    assert len(list(Path("data/test").iterdir())) == 2


def test_the_mapping_file_is_private_from_its_first_byte(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the mapping was renamed into place with the umask's mode (0666 under umask 0) and
    made 0600 only afterwards: readable by anyone in between."""
    write(series_datasets(hu_volume(24), name="mapped"), project / "dicom")
    mapping = project / "private" / "mapping.csv"
    seen: list[tuple[str, int]] = []
    real_replace, real_chmod = os.replace, os.chmod

    def watch(path: object) -> None:
        if os.path.exists(path) and mapping.name in os.fspath(path):  # type: ignore[arg-type]
            seen.append((os.path.basename(os.fspath(path)), os.stat(path).st_mode & 0o777))  # type: ignore[arg-type]

    def replace(src: object, dst: object, *args: object, **kwargs: object) -> None:
        watch(src)  # the temp file, full, the moment it becomes the mapping
        real_replace(src, dst, *args, **kwargs)  # type: ignore[arg-type]
        watch(dst)

    def chmod(path: object, mode: int, *args: object, **kwargs: object) -> None:
        watch(path)
        real_chmod(path, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "chmod", chmod)
    old_umask = os.umask(0)  # the worst case: nothing masked
    try:
        assert _import("--dicom", "dicom", "--out", "data", "--mapping", str(mapping)) == 0
    finally:
        os.umask(old_umask)
    assert seen and all(mode == 0o600 for _, mode in seen), seen
    assert mapping.stat().st_mode & 0o777 == 0o600 and len(mapping.read_text().splitlines()) == 25


def test_a_header_claiming_60000_by_60000_is_skipped_without_decoding(
        project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Before: the huge slice went on to be decoded (3.6 gigapixels of int16 asked of pydicom)."""
    from hemo_model.data import dicom

    write(series_datasets(hu_volume(24), name="normal"), project / "dicom" / "normal")
    huge = series_datasets(hu_volume(1), name="huge")[0]
    huge.Rows = huge.Columns = 60000  # the pixel data itself stays 32 x 32
    write([huge], project / "dicom" / "huge")
    decoded: list[int] = []
    real_read_hu = dicom.read_hu

    def read_hu(path: Path):  # type: ignore[no-untyped-def]
        import pydicom

        header = pydicom.dcmread(path, stop_before_pixels=True)
        decoded.append(int(header.Rows) * int(header.Columns))
        if decoded[-1] > 1024 * 1024:
            raise MemoryError("would have decoded a 60000 x 60000 image")  # stand-in: never actually try
        return real_read_hu(path)

    monkeypatch.setattr(dicom, "read_hu", read_hu)
    assert _import("--dicom", "dicom", "--out", "data") == 0
    out = capsys.readouterr().out
    assert max(decoded) == 32 * 32 and len(decoded) == 24
    assert "skipped: over_pixel_budget 1" in out and _report()["files_skipped"] == {"over_pixel_budget": 1}
    # the budget is data.max_image_size squared: raised above 60000, the header passes the scan
    assert _import("--dicom", "dicom/huge", "--out", "big", "--set", "data.max_image_size=60000") == 2
    assert _report()["files_skipped"] == {} and _report()["series_skipped"] == {"undecodable_pixels": 1}
