"""Every row of the exit-code table (hemo_pipeline/exit_codes.py, README "Exit codes"): the code an
orchestrator sees is the one that tells it whether a retry can help, with one `error:` line.

Rows not exercised here are exercised where the failure lives: a malformed DICOMweb URL
(tests/security/test_dicomweb.py), a tampered or foreign model (tests/security/test_model_loading.py).
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from hemo_pipeline import exit_codes as errors
from hemo_pipeline.cli import main


def _lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_ok_is_0(workdir: Path) -> None:
    assert main(["split"]) == 0 and Path("reports/split.json").is_file()


def test_data_that_fails_validation_is_1(data_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # the embedded MLflow store, whatever MLFLOW_TRACKING_URI an earlier test in this worker left
    # (seen: exit 3, a server of an earlier file gone, once the longest files moved first)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HEMO_PARENT_RUN_ID", raising=False)
    (data_copy / "train.csv").write_text((data_copy / "train.csv").read_text().replace(",0,", ",2,", 1))
    assert main(["validate", "--data", str(data_copy), "--reports", str(tmp_path / "r")]) == errors.EXIT_VALIDATION
    assert _lines(capsys)[-1].startswith("error: ")


def test_a_file_that_stays_unreadable_is_2_not_transient(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A folder where a file is expected will not read better on a retry (it was exit 3)."""
    Path("params-folder").mkdir()
    assert main(["split", "--params", "params-folder"]) == errors.EXIT_USER
    (line,) = _lines(capsys)
    assert line.startswith("error: ") and "params-folder" in line


@pytest.mark.parametrize(("code", "expected"), [(errno.EIO, errors.EXIT_TRANSIENT), (errno.ESTALE, errors.EXIT_TRANSIENT),
                                                (errno.ENOSPC, errors.EXIT_USER), (errno.EACCES, errors.EXIT_USER)])
def test_io_errors_are_sorted_by_whether_they_pass(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str], code: int, expected: int) -> None:
    from hemo_pipeline.steps import split

    def fail(args: object) -> int:
        raise OSError(code, "simulated", "data/train.csv")

    monkeypatch.setattr(split, "run", fail)
    assert main(["split"]) == expected
    (line,) = _lines(capsys)
    assert line.startswith("error: ") and "data/train.csv" in line


def test_an_unreachable_tracking_server_is_3(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    assert main(["start-run"]) == errors.EXIT_TRANSIENT
    assert _lines(capsys)[-1].startswith("error: MLflow tracking server")


def test_a_bug_is_70_with_its_traceback_never_1(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 1 means "the data failed validation": a bug must not look like that to an orchestrator."""
    from hemo_pipeline.steps import split

    def bug(args: object) -> int:
        return {}["missing"]  # type: ignore[return-value]

    monkeypatch.setattr(split, "run", bug)
    assert main(["split"]) == errors.EXIT_INTERNAL == 70
    err = "\n".join(_lines(capsys))
    assert "Traceback" in err and "KeyError" in err and err.splitlines()[-1].startswith("error: internal error")


def test_an_interrupt_is_130(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hemo_pipeline.steps import split

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(split, "run", interrupted)
    assert main(["split"]) == errors.EXIT_INTERRUPTED == 130


def test_orchestrators_retry_exactly_the_transient_codes() -> None:
    """The runners (Airflow, Kubeflow) read the same table: 1, 2 and 70 fail at once, 3 retries."""
    from hemo_pipeline.orchestration import runners

    assert errors.NO_RETRY_EXIT_CODES == {1, 2, 70}
    for code in (1, 2, 70):
        assert runners.StepFailed("x", code, "").user_error
    assert not runners.StepFailed("x", 3, "").user_error
