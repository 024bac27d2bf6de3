"""`hemo score` and model loading: bad input gives one clear error and touches nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from components.cli import main


@pytest.fixture
def earlier_output(workdir: Path) -> Path:
    out = workdir / "outputs" / "predictions.csv"
    out.parent.mkdir()
    out.write_text("earlier predictions\n")
    return out


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_missing_alias(workdir: Path, earlier_output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["score", "--data", "data/test", "--out", str(earlier_output)]) == 2
    assert "no model version has alias 'champion'" in _error(capsys)
    assert earlier_output.read_text() == "earlier predictions\n"


def test_unreadable_checkpoint(workdir: Path, earlier_output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "broken.pt").write_bytes(b"not a checkpoint")
    assert main(["score", "--model", "broken.pt", "--data", "data/test", "--out", str(earlier_output)]) == 2
    error = _error(capsys)
    assert "cannot use checkpoint broken.pt: not a PyTorch checkpoint" in error and "truncated" not in error
    assert main(["score", "--model", "nope.pt", "--data", "data/test", "--out", str(earlier_output)]) == 2
    assert "nope.pt does not exist" in _error(capsys)
    assert earlier_output.read_text() == "earlier predictions\n"


def test_data_folder_without_images(workdir: Path, earlier_output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "empty").mkdir()
    assert main(["score", "--model", "x.pt", "--data", "empty", "--out", str(earlier_output)]) == 2
    assert "empty holds no patient folders" in _error(capsys)
    assert earlier_output.read_text() == "earlier predictions\n"


def test_gate_without_challenger(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate"]) == 2
    assert "outputs/challenger.json not found: run `hemo evaluate` first" in _error(capsys)


def test_refine_without_stage_one(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["refine"]) == 2
    assert "run `hemo train` first" in _error(capsys)


def test_unknown_params_key(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (workdir / "params.yaml").write_text("train: {epoch: 3}\n")
    assert main(["train"]) == 2
    assert "params.yaml: unknown key 'train.epoch'; did you mean 'epochs'?" in _error(capsys)
