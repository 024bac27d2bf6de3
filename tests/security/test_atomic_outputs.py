"""Outputs replaced whole: a failure or an interrupt leaves the previous version, never a half-written
one and never none (issue 16, part 6): validate's Data Docs, ablate's plot and tables, and the
data folder swap of `hemo import-dicom` (dicom_output.staged).

Each test is the fault as injected against the code before the fix; the docstring says what it did there.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

import pytest

from hemo_pipeline.cli import main
from hemo_pipeline.services.dicom_output import staged


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for name, data in _tree(root).items():
        digest.update(name.encode() + b"\0" + data)
    return digest.hexdigest()


# --- validate: Data Docs ------------------------------------------------------------------------

@pytest.fixture
def reports(tiny_data: Path, tmp_path: Path, sqlite_tracking_uri: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """reports/validation of a first, successful `hemo validate` of the tiny data."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sqlite_tracking_uri)
    monkeypatch.delenv("HEMO_PARENT_RUN_ID", raising=False)
    folder = tmp_path / "reports"
    assert main(["validate", "--data", str(tiny_data), "--reports", str(folder), "--image-size", "64",
                 "--no-mlflow"]) == 0
    assert (folder / "data_docs" / "index.html").is_file()
    return folder


def test_an_interrupted_validation_leaves_the_old_data_docs(tiny_data: Path, reports: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Before: the old Data Docs were deleted before the suite ran; an interrupt in the middle of
    the suite left only the pages of the frames checked so far."""
    from great_expectations.checkpoint import Checkpoint

    before, summary = _digest(reports / "data_docs"), (reports / "summary.json").read_bytes()
    original, calls = Checkpoint.run, []

    def interrupted(self, *args, **kwargs):
        calls.append(self.name)
        if len(calls) == 3:  # two frames' pages are written by now
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Checkpoint, "run", interrupted)
    assert main(["validate", "--data", str(tiny_data), "--reports", str(reports), "--image-size", "64",
                 "--no-mlflow"]) == 130
    assert len(calls) == 3
    assert _digest(reports / "data_docs") == before and (reports / "summary.json").read_bytes() == summary
    assert sorted(p.name for p in reports.iterdir()) == ["data_docs", "summary.json"]  # no scratch left


def test_a_validation_run_replaces_the_data_docs_whole(data_copy: Path, reports: Path) -> None:
    """A failing validation is a finished run: its Data Docs replace the old ones, and pages of the
    old run do not linger beside them."""
    (reports / "data_docs" / "stale.html").write_text("from an earlier run")
    next(data_copy.glob("train/*/*_0.jpg")).unlink()
    assert main(["validate", "--data", str(data_copy), "--reports", str(reports), "--image-size", "64",
                 "--no-mlflow"]) == 1
    docs = reports / "data_docs"
    assert (docs / "index.html").is_file() and not (docs / "stale.html").exists()
    assert sorted(p.name for p in reports.iterdir()) == ["data_docs", "summary.json"]
    scratch = ".data_docs-new-"
    assert not any(scratch in p.read_text(errors="replace") for p in docs.rglob("*.html"))  # links stay relative


# --- ablate: plot and tables --------------------------------------------------------------------

@pytest.fixture
def cheap_ablate(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """`hemo ablate` with training and scoring replaced by the gate patients' own labels (perfect
    predictions): only the reporting runs for real. Returns the reports folder, holding the files
    of an earlier run."""
    from hemo_model.metrics.bootstrap import patient_counts
    from hemo_pipeline.steps import ablate

    monkeypatch.setattr(ablate, "_stage1", lambda name, *args: workdir / name)
    monkeypatch.setattr(ablate, "_score", lambda checkpoint, patients, *args: patients)
    monkeypatch.setattr(ablate, "_counts", lambda patients, single: patient_counts(
        [p.labels for p in patients], [p.labels for p in patients]))
    folder = workdir / "reports" / "ablate"
    folder.mkdir(parents=True)
    for name in ("ablation.png", "ablation.md", "ablation.csv"):
        (folder / name).write_bytes(f"earlier {name}\n".encode())
    return folder


def _half_written_savefig(self, fname, *args, **kwargs) -> None:
    """A savefig that dies half-way (a full disk): some bytes reach the file, then an error."""
    if hasattr(fname, "write"):
        fname.write(b"\x89PNG\r\n\x1a\n half")
    else:
        Path(fname).write_bytes(b"\x89PNG\r\n\x1a\n half")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failing_plot_leaves_the_old_ablation_reports(cheap_ablate: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Before: ablation.png was saved in place (a truncated PNG after the failure), after the new
    tables had already replaced the old ones."""
    import matplotlib.figure

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", _half_written_savefig)
    assert main(["ablate", "--device", "cpu", "--variants", "loss"]) in (2, 3)  # one line, user or transient I/O
    assert "No space left on device" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in cheap_ablate.iterdir()} == {
        name: f"earlier {name}\n".encode() for name in ("ablation.png", "ablation.md", "ablation.csv")}


def test_ablate_writes_its_reports_atomically_when_all_goes_well(cheap_ablate: Path) -> None:
    assert main(["ablate", "--device", "cpu", "--variants", "loss"]) == 0
    assert sorted(p.name for p in cheap_ablate.iterdir()) == ["ablation.csv", "ablation.md", "ablation.png"]
    assert (cheap_ablate / "ablation.png").read_bytes().startswith(b"\x89PNG")
    assert "| loss bce |" in (cheap_ablate / "ablation.md").read_text()
    assert (cheap_ablate / "ablation.png").stat().st_mode & 0o777 == 0o666 & ~_umask()


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


# --- import-dicom: the data folder swap ---------------------------------------------------------

OLD = {"train.csv": b"old labels\n", "train/ID_a/a_0.jpg": b"old slice"}
NEW = {"train.csv": b"new labels\n", "train/ID_a/a_0.jpg": b"old slice", "train/ID_b/b_0.jpg": b"new slice"}


def _make(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def _import(out: Path) -> None:
    """What an import does inside staged(): add a patient, replace (never edit) train.csv."""
    with staged(out) as work:
        assert _tree(work) == OLD  # starts as (a hard-linked copy of) the current data
        (work / "train.csv").unlink()
        _make(work, {name: data for name, data in NEW.items() if name not in OLD or OLD[name] != data})


def _two_renames_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the path of a system without an atomic exchange: two renames (the only path the code
    before the fix had, hence the import guard)."""
    try:
        from hemo_pipeline.services import folder_swap
    except ImportError:
        return
    monkeypatch.setattr(folder_swap, "exchange", lambda first, second: False)


class FailOn:
    """A wrapper of ``os.rename`` (and of the exchange) that raises ``error`` on call ``when``."""

    def __init__(self, when: int, error: BaseException) -> None:
        self.when, self.error, self.calls = when, error, 0

    def wrap(self, function):
        def wrapped(*args, **kwargs):
            self.calls += 1
            if self.calls == self.when:
                raise self.error
            return function(*args, **kwargs)
        return wrapped


@pytest.fixture
def data(tmp_path: Path) -> Path:
    _make(tmp_path / "data", OLD)
    return tmp_path / "data"


def _no_scratch(parent: Path) -> bool:
    return not [p for p in parent.iterdir() if p.name.startswith(".")]


def test_a_normal_import_swaps_the_new_data_in(data: Path) -> None:
    _import(data)
    assert _tree(data) == NEW and _no_scratch(data.parent)


def test_a_symlinked_data_folder_keeps_its_link(tmp_path: Path, data: Path) -> None:
    link = tmp_path / "project" / "data"
    link.parent.mkdir()
    link.symlink_to(data, target_is_directory=True)
    _import(link)
    assert link.is_symlink() and link.resolve() == data.resolve()
    assert _tree(data) == NEW and _no_scratch(data.parent) and _no_scratch(link.parent)


@pytest.mark.parametrize("error", [KeyboardInterrupt(), OSError(errno.EIO, "I/O error")], ids=["interrupt", "oserror"])
def test_a_failure_between_the_two_renames_keeps_the_old_data(data: Path, monkeypatch: pytest.MonkeyPatch,
                                                              error: BaseException) -> None:
    """Before: the old folder was renamed aside, the second rename failed, and the `finally`
    deleted the scratch folder holding the old data: no data folder at all."""
    _two_renames_only(monkeypatch)
    fault = FailOn(2, error)
    monkeypatch.setattr(os, "rename", fault.wrap(os.rename))
    with pytest.raises(type(error)):
        _import(data)
    assert fault.calls >= 2  # (a third call is the repair)
    assert _tree(data) == OLD and _no_scratch(data.parent)


def test_no_interrupt_at_any_rename_or_exchange_loses_both_versions(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Interrupt the n-th rename/exchange for every n, with and without the atomic exchange:
    afterwards the data folder is whole, old or new."""
    from hemo_pipeline.services import folder_swap

    for atomic in (True, False):
        for when in range(1, 6):
            out = tmp_path / f"{atomic}-{when}" / "data"
            _make(out, OLD)
            fault = FailOn(when, KeyboardInterrupt())
            with monkeypatch.context() as patch:
                patch.setattr(os, "rename", fault.wrap(os.rename))
                exchange = folder_swap.exchange if atomic else (lambda first, second: False)
                patch.setattr(folder_swap, "exchange", fault.wrap(exchange))
                try:
                    _import(out)
                except KeyboardInterrupt:
                    pass
            assert _tree(out) in (OLD, NEW), (atomic, when)
            assert _no_scratch(out.parent), (atomic, when)


def test_exchange_swaps_two_folders_atomically_on_linux(tmp_path: Path) -> None:
    from hemo_pipeline.services.folder_swap import exchange

    first, second = tmp_path / "first", tmp_path / "second"
    _make(first, {"a": b"1"})
    _make(second, {"b": b"2"})
    swapped = exchange(first, second)
    if not os.uname().sysname == "Linux":
        assert swapped is False
        return
    assert swapped is True
    assert _tree(first) == {"b": b"2"} and _tree(second) == {"a": b"1"}
    with pytest.raises(FileNotFoundError):
        exchange(tmp_path / "missing", first)


def test_a_failed_import_into_a_new_folder_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "fresh" / "data"
    with pytest.raises(RuntimeError):
        with staged(out) as work:
            (work / "train.csv").write_text("half")
            raise RuntimeError("boom")
    assert not out.exists() and _no_scratch(out.parent)
    assert list(out.parent.iterdir()) == []
