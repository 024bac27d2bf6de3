"""Hostile and careless input, one test per probe: nothing executes, nothing is read outside the
data folder, every refusal is one line naming the file/version/URI with a meaningful exit code."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from PIL import Image

from hemo_model.data.patients import load_split
from hemo_pipeline.cli import main
from tests.conftest import running_mlflow_server
from tests.hemo_model.data.test_images import claim_size

HEMO = str(Path(sys.executable).with_name("hemo"))


class Payload(torch.nn.Module):
    """A model whose pickle, when loaded, creates ``marker`` (what an attacker would run instead)."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker
        self.fc = torch.nn.Linear(2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3))[:, :2])

    def __reduce_ex__(self, protocol: object) -> tuple:
        return (Path.touch, (self.marker,))


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.slow
def test_pickle_model_in_the_registry_is_refused_and_never_run(workdir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from hemo_pipeline.services import registry

    marker = tmp_path / "payload-ran"
    server_root = tmp_path / "server"
    server_root.mkdir()
    with running_mlflow_server(server_root) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        mlflow.set_tracking_uri(url)
        with mlflow.start_run() as run:
            info = mlflow.pytorch.log_model(Payload(marker), name="model", serialization_format="pickle",
                                            registered_model_name=registry.MODEL_NAME,
                                            pip_requirements=["torch"])
            mlflow.log_dict({"train_patients": []}, registry.TRAIN_PATIENTS_ARTIFACT)
        version = str(info.registered_model_version)
        # Even with provenance that lets it through the gate's fairness check, it is never loaded.
        from hemo_model.data.roles import patients_digest

        registry.tag_version(version, {"hemo.train_patients.sha256": patients_digest([]),
                                       "hemo.train_patients.artifact":
                                           f"runs:/{run.info.run_id}/{registry.TRAIN_PATIENTS_ARTIFACT}"})
        mlflow.MlflowClient().set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, version)
        assert not marker.exists()
        capsys.readouterr()
        assert main(["score", "--data", "data/test", "--out", "pred.csv", "--device", "cpu"]) == 2
        error = _one_error_line(capsys)
        assert f"v{version} is not in this release's model format" in error and "hemo evaluate --model" in error
        assert main(["gate", "--version", version, "--device", "cpu"]) == 2
        assert f"v{version}" in _one_error_line(capsys)
    assert not marker.exists(), "the pickle payload ran"
    assert not Path("pred.csv").exists()


def test_local_checkpoint_payload_and_truncation_are_told_apart(workdir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from hemo_model.model.networks import HemoNet
    from hemo_model.model.spec import ModelSpec
    from hemo_model.model.storage import save_checkpoint

    marker = tmp_path / "payload-ran"
    torch.save({"model_state": Payload(marker), "config": {}}, tmp_path / "evil.pt")
    assert main(["score", "--model", str(tmp_path / "evil.pt"), "--data", "data/test", "--device", "cpu"]) == 2
    error = _one_error_line(capsys)
    assert "not a hemo checkpoint: it references Python code" in error and "(refused)" in error
    assert "truncated" not in error and not marker.exists()
    save_checkpoint(tmp_path / "good.pt", HemoNet(head="linear"), ModelSpec(head="linear", image_size=64))
    whole = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    assert main(["score", "--model", str(tmp_path / "cut.pt"), "--data", "data/test", "--device", "cpu"]) == 2
    assert "the file is truncated" in _one_error_line(capsys)


def _swap_first_slice(data: Path, split: str, write) -> Path:
    """Replace the first slice of the first patient of ``split`` in a private copy of the data."""
    folder = sorted((data / split).iterdir())[0]
    target = sorted(folder.iterdir())[0]
    target.unlink()
    write(target)
    return target


@pytest.fixture
def private_data(pipeline_data: Path, workdir: Path) -> Path:
    """A private copy of the tiny pipeline data in place of the shared symlink."""
    (workdir / "data").unlink()
    shutil.copytree(pipeline_data, workdir / "data")
    return workdir / "data"


def _fails_everywhere(split_target: Path, capsys: pytest.CaptureFixture[str], fragment: str, check: str) -> None:
    """validate exit 1 with the check naming the file; the loaders of train/score exit 2 naming it."""
    name = split_target.name
    assert main(["validate", "--data", "data", "--reports", "r", "--no-mlflow"]) == 1
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith(f"FAIL {check}"))
    assert name in line and fragment in line
    if split_target.parts[-3] == "test":
        assert main(["score", "--model", "x.pt", "--data", "data/test", "--device", "cpu"]) == 2
    else:
        assert main(["train", "--max-steps", "1", "--device", "cpu"]) == 2
    error = _one_error_line(capsys)
    assert name in error and fragment in error


def test_symlink_out_of_the_data_folder(private_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "outside.jpg"
    Image.new("L", (64, 64), 99).save(outside, format="JPEG")
    for split in ("train", "test"):
        target = _swap_first_slice(private_data, split, lambda p: os.symlink(outside, p))
        _fails_everywhere(target, capsys, "outside the data folder" if split == "test" else "outside", "images.inside_root")
        target.unlink()
        shutil.copy(outside, target)


def test_dotdot_in_the_label_file_is_refused_by_the_loader_too(private_data: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    escape = private_data.parent / "escape"
    escape.mkdir()
    Image.new("L", (64, 64)).save(escape / "x_0.jpg", format="JPEG")
    with (private_data / "train.csv").open() as handle:
        rows = list(csv.reader(handle))
    rows[1][0] = "../escape"
    with (private_data / "train.csv").open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    assert main(["validate", "--data", "data", "--reports", "r", "--no-mlflow"]) == 1
    assert "FAIL labels.safe_paths" in capsys.readouterr().out
    assert main(["train", "--max-steps", "1", "--device", "cpu"]) == 2
    error = _one_error_line(capsys)
    assert "'../escape'" in error and "not a plain file or folder name" in error and "train.csv" in error


def test_header_claiming_a_huge_image(private_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def bomb(path: Path) -> None:
        buffer = io.BytesIO()
        Image.new("L", (64, 64)).save(buffer, format="JPEG")
        path.write_bytes(claim_size(buffer.getvalue(), 60000, 60000))

    target = _swap_first_slice(private_data, "test", bomb)
    started = time.perf_counter()
    _fails_everywhere(target, capsys, "60000x60000 exceeds the 1,048,576-pixel limit", "images.decode")
    assert time.perf_counter() - started < 60


def test_png_named_jpg_and_sixteen_bit(private_data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    target = _swap_first_slice(private_data, "test", lambda p: Image.new("L", (64, 64)).save(p, format="PNG"))
    _fails_everywhere(target, capsys, "holds a PNG image but is named .jpg", "images.decode")
    target.unlink()
    Image.fromarray(np.full((64, 64), 40000, dtype=np.uint16)).save(target, format="PNG")
    _fails_everywhere(target, capsys, "holds a PNG image", "images.decode")
    target.unlink()
    Image.new("RGB", (64, 64)).save(target, format="JPEG")  # a real JPEG, but colour
    assert main(["score", "--model", "x.pt", "--data", "data/test", "--device", "cpu"]) == 2
    assert "mode RGB" in _one_error_line(capsys)


@pytest.mark.parametrize("variant", ["bom", "crlf", "blank_lines", "quoted"])
def test_label_files_as_people_write_them(private_data: Path, variant: str, capsys: pytest.CaptureFixture[str]) -> None:
    reference = load_split(private_data, "train")
    text = (private_data / "train.csv").read_text()
    if variant == "bom":
        raw = "\ufeff" + text
    elif variant == "crlf":
        raw = text.replace("\n", "\r\n")
    elif variant == "blank_lines":
        raw = text + "\n\n  \n"
    else:
        raw = "\n".join(",".join(f'"{cell}"' for cell in line.split(",")) for line in text.splitlines()) + "\n"
    (private_data / "train.csv").write_bytes(raw.encode("utf-8"))
    assert main(["validate", "--data", "data", "--reports", "r", "--no-mlflow"]) == 0, capsys.readouterr().out
    again = load_split(private_data, "train")
    assert [p.dirname for p in again] == [p.dirname for p in reference]
    assert all((a.labels == b.labels).all() and a.paths == b.paths for a, b in zip(again, reference))


@pytest.mark.slow
def test_tracking_server_gone_for_good_during_train(workdir: Path, tmp_path: Path) -> None:
    server_root = tmp_path / "server"
    server_root.mkdir()
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
           "OMP_NUM_THREADS": "1"}
    with running_mlflow_server(server_root) as url:
        env["MLFLOW_TRACKING_URI"] = url
        process = subprocess.Popen([HEMO, "train", "--epochs", "3", "--max-steps", "1", "--device", "cpu"],
                                   env=env, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.perf_counter()
        # The server goes away as soon as training has started logging.
        deadline = time.monotonic() + 120
        while not (workdir / "outputs/train/last.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
    out, err = process.communicate(timeout=300)  # the server stopped when the context exited
    seconds = time.perf_counter() - started
    assert process.returncode == 3, (out[-2000:], err[-3000:])
    lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert lines and f"MLflow tracking server {url} did not answer" in lines[-1]
    assert "Traceback" not in err
    assert seconds < 120, f"blocked {seconds:.0f} s"
    assert (workdir / "outputs/train/last.pt").is_file()  # the finished epoch is kept for a resume
