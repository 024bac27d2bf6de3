"""`hemo plan-scoring`: the shards of the scoring folder and the one model version they all use,
or one clear error before any shard starts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import mlflow
import pytest

from hemo_model.data.roles import patients_digest
from hemo_pipeline.cli import main
from hemo_pipeline.services import registry, tracking
from hemo_pipeline.services.settings import SplitSettings
from tests.markers import MarkerNet, marker_architecture, marker_spec

pytestmark = pytest.mark.usefixtures(marker_architecture.__name__)


def _register() -> str:
    tracking.configure()
    provenance = {"split": asdict(SplitSettings()), "train_patients": [], "train_patients_sha256": patients_digest(set())}
    with mlflow.start_run(run_name="evaluate"):
        return registry.log_and_register(MarkerNet(("read", "positive", "read", "negative", "read")),
                                         marker_spec(), provenance)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def test_plan_pins_every_shard_to_one_version(workdir: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HEMO_RESULT_FILE", str(workdir / "plan.json"))
    monkeypatch.setenv("HEMO_RESULT_FIELD_SHARDS", str(workdir / "shards.out"))
    version = _register()
    assert main(["plan-scoring", "--data", "data/test", "--shards", "2", "--model", version]) == 0
    plan = json.loads((workdir / "plan.json").read_text())
    uri = f"models:/hemorrhage-classifier/{version}"
    assert plan["shards"] == [{"index": 0, "count": 2, "model": uri}, {"index": 1, "count": 2, "model": uri}]
    assert plan["shard_count"] == 2 and plan["patients"] == 2 and plan["model"] == uri
    assert plan["model_version"] == version
    assert json.loads((workdir / "shards.out").read_text()) == plan["shards"]  # a Kubeflow LIST output
    assert "2 patients of data/test in 2 shard(s)" in capsys.readouterr().out

    # the champion alias is resolved once, to the version it names now
    assert main(["promote", "--version", version, "--reason", "test"]) == 0
    assert main(["plan-scoring", "--data", "data/test", "--shards", "1"]) == 0
    assert json.loads((workdir / "plan.json").read_text())["model"] == registry.version_uri(version)


@pytest.mark.parametrize(("args", "message"), [
    (["--shards", "3", "--model", "1"], "--shards 3: data/test holds 2 patient(s), so 1 shard(s) would be empty"),
    (["--shards", "0", "--model", "1"], "--shards 0: give at least 1"),
    (["--shards", "2", "--model", "7"], "hemorrhage-classifier has no version 7"),
    (["--shards", "2"], "no model version has alias 'champion'"),
    (["--shards", "2", "--model", "outputs/best.pt"], "shards score registered versions only"),
])
def test_a_plan_that_cannot_work_fails_before_any_shard(workdir: Path, args: list[str], message: str,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan-scoring", "--data", "data/test", *args]) == 2
    assert message in _error(capsys)
