"""Faults injected for real: a training process killed with SIGKILL mid-epoch, and a tracking
server that goes away for ~20 s. Nothing is lost but the epoch in progress, and no MLflow run is
left RUNNING."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch

from tests.conftest import free_port, read_until, step_env, wait_for_http

HEMO = str(Path(sys.executable).with_name("hemo"))
TRAIN = [HEMO, "train", "--epochs", "3", "--max-steps", "6", "--device", "cpu"]
STEP_TIMEOUT_S = 300
"""Far above what one of these tiny steps takes (seconds): a step that runs longer has hung."""


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["model_state"]


def _kill_during_epoch_two(workdir: Path, out: str, env: dict[str, str]) -> float:
    """Start training, SIGKILL it in the middle of epoch 2; return the seconds it had run."""
    process = subprocess.Popen([*TRAIN, "--out", out], cwd=workdir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    started = time.perf_counter()
    read_until(process, "epoch 1: loss", STEP_TIMEOUT_S)  # printed after epoch 1's checkpoint is written
    time.sleep(1.5)  # well inside epoch 2
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    return time.perf_counter() - started


@pytest.mark.slow
def test_sigkill_mid_epoch_then_the_same_command_resumes_exactly(workdir: Path) -> None:
    env = step_env()
    subprocess.run([*TRAIN, "--out", "outputs/uninterrupted"], cwd=workdir, env=env, check=True, capture_output=True,
                   timeout=STEP_TIMEOUT_S)
    ran = _kill_during_epoch_two(workdir, "outputs/train", env)
    assert torch.load(workdir / "outputs/train/last.pt", weights_only=True)["epoch"] == 1  # epoch 2 was lost
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list",
                              filter_string="tags.`hemo.step` = 'train' and attributes.status = 'RUNNING'")
    (killed,) = runs  # the killed process left its run open ...

    again = subprocess.run([*TRAIN, "--out", "outputs/train"], cwd=workdir, env=env, capture_output=True, text=True,
                           timeout=STEP_TIMEOUT_S)
    assert again.returncode == 0, again.stderr[-2000:]
    epochs_run = [f"epoch {n}" for n in re.findall(r"epoch (\d+): loss", again.stdout)]
    assert epochs_run == ["epoch 2", "epoch 3"]  # ... the same command resumed after the last finished epoch
    a, b = _weights(workdir / "outputs/uninterrupted/last.pt"), _weights(workdir / "outputs/train/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from an uninterrupted run"
    resumed = mlflow.get_run(killed.info.run_id)  # ... and continued the killed run's metric history
    assert resumed.info.status == "FINISHED"
    history = mlflow.MlflowClient().get_metric_history(killed.info.run_id, "val_micro_f2")
    assert sorted(m.step for m in history) == [1, 2, 3]
    print(f"killed after {ran:.1f} s in epoch 2; lost: the unfinished epoch 2 only")


@pytest.mark.slow
def test_a_dead_run_is_closed_failed_by_the_next_fresh_start(workdir: Path) -> None:
    env = step_env()
    _kill_during_epoch_two(workdir, "outputs/train", env)
    mlflow.set_tracking_uri(f"sqlite:///{workdir / 'mlflow.db'}")
    (killed,) = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list",
                                   filter_string="tags.`hemo.step` = 'train'")
    parent = killed.data.tags["mlflow.parentRunId"]
    result = subprocess.run([*TRAIN, "--epochs", "1", "--out", "outputs/train", "--resume", "never"], cwd=workdir,
                            env=env, capture_output=True, text=True, timeout=STEP_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-2000:]
    dead = mlflow.get_run(killed.info.run_id)
    assert dead.info.status == "FAILED" and "died" in dead.data.tags["hemo.end_reason"]
    assert mlflow.get_run(parent).info.status == "FAILED"  # its pipeline never reached its last step
    # the new pipeline run ends FINISHED when its last step does
    assert subprocess.run([HEMO, "end-run"], cwd=workdir, env=env, capture_output=True,
                          timeout=STEP_TIMEOUT_S).returncode == 0
    fresh = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list",
                               filter_string="tags.`hemo.step` = 'pipeline'", order_by=["attributes.start_time DESC"])[0]
    assert fresh.info.run_id != parent and fresh.info.status == "FINISHED"
    leftovers = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list",
                                   filter_string="attributes.status = 'RUNNING'")
    assert leftovers == []


def _server(root: Path, port: int) -> subprocess.Popen:
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen([str(mlflow_bin), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                "--artifacts-destination", (root / "artifacts").as_uri(), "--host", "127.0.0.1",
                                "--port", str(port), "--workers", "1"], cwd=root, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    wait_for_http(f"http://127.0.0.1:{port}/health", timeout=120, process=process)
    return process


def _stop(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


@pytest.mark.slow
def test_tracking_server_restarted_during_a_step(workdir: Path, tmp_path: Path) -> None:
    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _server(root, port)
    env = step_env(MLFLOW_TRACKING_URI=url)
    process = subprocess.Popen([*TRAIN, "--out", "outputs/train"], cwd=workdir, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    read_until(process, "epoch 1: loss", STEP_TIMEOUT_S)
    _stop(server)  # gone while the step logs its epochs ...
    time.sleep(20)
    server = _server(root, port)  # ... and back ~20 s later, same store
    try:
        try:
            rest, _ = process.communicate(timeout=STEP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            rest, _ = process.communicate()
            pytest.fail(f"train did not finish within {STEP_TIMEOUT_S} s of the server's return:\n{rest[-3000:]}")
        assert process.returncode == 0, rest[-3000:]
        mlflow.set_tracking_uri(url)
        runs = mlflow.search_runs(experiment_names=["hemorrhage-classifier"], output_format="list")
        assert {r.info.status for r in runs if r.data.tags.get("hemo.step") == "train"} == {"FINISHED"}
        history = mlflow.MlflowClient().get_metric_history(
            next(r for r in runs if r.data.tags.get("hemo.step") == "train").info.run_id, "val_micro_f2")
        assert sorted(m.step for m in history) == [1, 2, 3]  # no epoch's metrics lost
    finally:
        _stop(server)
