"""A step's result: the JSON file for the Airflow runners, one file per field for Kubeflow outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hemo_pipeline.services.results import RESULT_ENV, field_env, publish


def test_fields_go_to_their_own_files_strings_raw_the_rest_as_json(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(RESULT_ENV, str(tmp_path / "result.json"))
    monkeypatch.setenv(field_env("promoted"), str(tmp_path / "outputs" / "promoted"))  # parent made as needed
    monkeypatch.setenv(field_env("reason"), str(tmp_path / "reason"))
    monkeypatch.setenv(field_env("challenger_version"), str(tmp_path / "version"))
    published = publish("gate", {"promoted": True, "reason": "first model: all rules passed", "challenger_version": "3",
                                 "gain": 0.25})
    assert json.loads((tmp_path / "result.json").read_text()) == published
    # Kubeflow reads a STRING output as the file's text and every other type as JSON
    assert (tmp_path / "outputs" / "promoted").read_text() == "true"
    assert (tmp_path / "reason").read_text() == "first model: all rules passed"
    assert (tmp_path / "version").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs", "reason", "result.json", "version"]


def test_a_field_the_step_does_not_publish_is_a_loud_wiring_error(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(RESULT_ENV, raising=False)
    monkeypatch.setenv(field_env("promoted"), str(tmp_path / "promoted"))
    with pytest.raises(RuntimeError, match=r"\['promoted'\].*hemo evaluate"):
        publish("evaluate", {"version": "1", "run_id": "abc"})
    assert not (tmp_path / "promoted").exists()


def test_without_any_request_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(RESULT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    publish("score", {"slices": 59})
    assert list(tmp_path.iterdir()) == []
    assert 'result: {"slices": 59, "step": "score"}' in capsys.readouterr().out
