"""A model in the registry is data, never code: whatever bytes a version holds, loading it runs
nothing that came with it; anything but spec.json + model.safetensors as registered is refused
with one line and exit 2, before a single model byte is parsed as pickle."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlflow
import pytest
import torch

from hemo_pipeline.cli import main
from hemo_pipeline.services import registry
from tests.markers import write_marker_data
from tests.security.registry_setup import PARAMS, Touch, craft_pt2, register_hemo, register_pt2, version_files


@pytest.fixture(scope="module")
def marker_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_marker_data(tmp_path_factory.mktemp("markers") / "data", patients=20)


@pytest.fixture
def project(marker_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "data").symlink_to(marker_data)
    (tmp_path / "params.yaml").write_text(PARAMS)
    first = sorted((marker_data / "train").iterdir())[0]
    shutil.copytree(first, tmp_path / "test" / first.name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HEMO_PARENT_RUN_ID", raising=False)
    return tmp_path


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "egistered model" not in line
             and not line.startswith("Created version")]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _score(version: str) -> int:
    return main(["score", "--model", registry.version_uri(version), "--data", "test", "--out", "pred.csv",
                 "--context", "1", "--device", "cpu"])


@pytest.mark.parametrize("variant", ["case", "duplicate"])
def test_crafted_pt2_archive_never_runs_its_payload(project: Path, variant: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's attack: a pt2 archive whose weights config, under a name that differs only in
    letter case (or repeated), marks a weight as pickled. Earlier releases ran it in every load."""
    marker = project / "payload-ran"
    version, _ = register_pt2()
    craft_pt2(version_files(version) / "data" / "model.pt2", marker, variant)
    capsys.readouterr()
    assert _score(version) == 2
    error = _error(capsys)
    assert f"v{version} is not in this release's model format" in error
    assert not marker.exists(), "the pickle payload ran while loading the model"
    assert not Path("pred.csv").exists()


def test_pickle_files_beside_valid_weights_are_never_opened(project: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """A version may hold any other files (an MLmodel with a pickle flavor, model.pkl): the loader
    reads spec.json and model.safetensors only, so the version scores and the payload never runs."""
    marker = project / "payload-ran"
    version = register_hemo([])
    folder = version_files(version)
    (folder / "model.pkl").write_bytes(__import__("pickle").dumps(Touch(marker)))
    torch.save({"model_state": Touch(marker)}, folder / "model.pt")
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    loader_module: mlflow.pytorch\n"
                                    "    data: model.pkl\n")
    assert _score(version) == 0, capsys.readouterr().err
    assert Path("pred.csv").is_file() and not marker.exists()


@pytest.mark.parametrize("target", ["model.safetensors", "spec.json"])
def test_files_changed_after_registration_are_refused(project: Path, target: str,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """The registering run recorded each file's sha256 as a (write-once) parameter; a file swapped
    in the artifact store afterwards, even a well-formed one, is not served."""
    version = register_hemo([])
    path = version_files(version) / target
    if target == "spec.json":
        spec = json.loads(path.read_text())
        spec["thresholds"] = [0.01] * 5  # a valid spec that would flag every slice
        path.write_text(json.dumps(spec))
    else:
        from safetensors.torch import load_file, save_file

        weights = load_file(str(path))
        weights["backbone.fc.bias"] = weights["backbone.fc.bias"] + 10.0  # same names and shapes: well formed
        save_file(weights, str(path))
    capsys.readouterr()
    assert _score(version) == 2
    error = _error(capsys)
    assert f"v{version}: its {target} is not the file its run registered" in error
    assert not Path("pred.csv").exists()


def test_a_spec_the_code_does_not_know_is_refused_with_one_line(project: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A version registered with digests that match a spec naming an unknown architecture (an
    attacker with write access to runs can record any digest): refused by the strict spec reader."""
    version = register_hemo([])
    folder = version_files(version)
    spec = json.loads((folder / "spec.json").read_text())
    spec["architecture"] = "resnet34; import os"
    (folder / "spec.json").write_text(json.dumps(spec))
    run_id = mlflow.MlflowClient().get_model_version(registry.MODEL_NAME, version).run_id
    digest = registry.sha256_file(folder / "spec.json")
    # parameters are write-once: a forger needs a run of their own, recorded as the version's run
    with mlflow.start_run(run_name="forged") as forged:
        params = mlflow.MlflowClient().get_run(run_id).data.params
        mlflow.log_params({**params, registry.PARAM_SPEC: digest})
    forged_version = mlflow.MlflowClient().create_model_version(
        registry.MODEL_NAME, mlflow.MlflowClient().get_model_version(registry.MODEL_NAME, version).source,
        run_id=forged.info.run_id).version
    capsys.readouterr()
    assert _score(str(forged_version)) == 2
    error = _error(capsys)
    assert "architecture 'resnet34; import os'" in error and "spec.json" in error


def test_hemo_forces_weights_only_torch_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second wall: every `hemo` process makes torch.load refuse pickled code even where a
    caller passes weights_only=False."""
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "payload-ran"
    torch.save({"x": Touch(marker)}, tmp_path / "evil.pt")
    with pytest.raises(SystemExit):
        main(["summary", "--help"])
    assert os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD") == "1"
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(tmp_path / "evil.pt", weights_only=False)
    assert not marker.exists()
