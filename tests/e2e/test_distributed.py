"""`hemo train` under torchrun on the CPU (gloo), end to end: two workers train the real network; a
worker killed mid-run fails the group, and the same command run again (what an Airflow retry, a
Kubernetes restart or a PyTorchJob's restart policy does) resumes after the last finished epoch.

The runners start torchrun with ``--max-restarts 0`` and leave restarts to the orchestrator: a
group that torchrun's agent restarted in place was seen to hang for good in gloo's full-mesh
connect (both new ranks in ``ProcessGroupGloo`` -> ``Pair::waitUntilConnected``, past a 120 s
group timeout; once in CI, once in a CI-like run here), while a relaunch starts a fresh agent and
store. This test follows the path the product uses.

That data-parallel training takes the same steps as one process is checked exactly, and fast, in
tests/hemo_model/training/test_distributed.py; here BatchNorm's per-process statistics and per-rank
augmentation make the curves agree only in trend, so this test checks the launch, the resume and
that it learns.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hemo_pipeline.orchestration.runners import torchrun_entrypoint
from tests.conftest import read_until, step_env

HEMO = str(Path(sys.executable).with_name("hemo"))
TORCHRUN = str(Path(sys.executable).with_name("hemo-torchrun"))
TIMEOUT_S = 300
"""Far above a run's ~40 s here: one that takes longer has hung."""


def _command() -> list[str]:
    """The Docker runner's entrypoint (2 processes instead of one per GPU) and `hemo train`'s
    arguments; small global batches make an epoch long enough to kill a worker inside epoch 2."""
    entry = torchrun_entrypoint("2")
    assert entry[:2] == ["hemo-torchrun", "--standalone"] and "--max-restarts" in entry
    return [TORCHRUN, *entry[1:-1], HEMO, "train", "--device", "cpu", "--set", "train.lr=0.001",
            "--set", "data.workers=0", "--epochs", "3", "--batch-size", "4", "--max-steps", "30"]


def _workers(torchrun_pid: int) -> list[int]:
    """torchrun --standalone runs the elastic agent in its own process: the workers are its children."""
    return [int(p) for p in subprocess.run(["ps", "-o", "pid=", "--ppid", str(torchrun_pid)], capture_output=True,
                                           text=True, timeout=30).stdout.split()]


def _epochs(output: str) -> list[str]:
    return [f"epoch {n}" for n in re.findall(r"epoch (\d+): loss", output)]


@pytest.mark.slow
def test_a_killed_worker_fails_the_group_and_the_same_command_resumes(workdir: Path) -> None:
    env = step_env(HEMO_DIST_TIMEOUT_S="120")
    process = subprocess.Popen(_command(), cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    lines = read_until(process, "epoch 1: loss", TIMEOUT_S)  # rank 0 has written epoch 1's checkpoint
    time.sleep(0.5)
    workers = _workers(process.pid)
    assert len(workers) == 2, "".join(lines)[-3000:]
    os.kill(workers[-1], signal.SIGKILL)
    try:
        rest, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        rest, _ = process.communicate()
        pytest.fail(f"torchrun did not stop within {TIMEOUT_S} s after a worker was killed:\n"
                    + ("".join(lines) + rest)[-4000:])
    output = "".join(lines) + rest
    # the group failed with the killed worker's code (128 + SIGKILL), one the orchestrators retry
    assert process.returncode == 128 + signal.SIGKILL, output[-3000:]
    assert torch.load(workdir / "outputs/train/last.pt", weights_only=True)["epoch"] == 1, output[-3000:]

    again = subprocess.run(_command(), cwd=workdir, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert again.returncode == 0, (again.stdout + again.stderr)[-4000:]
    assert _epochs(again.stdout) == ["epoch 2", "epoch 3"], again.stdout[-3000:]  # epoch 1 was not trained again
    with (workdir / "reports/train_history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [row["epoch"] for row in history] == ["1", "2", "3"]
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])  # and it learns
    assert (workdir / "outputs/train/best.pt").is_file() and (workdir / "outputs/train/last.pt").is_file()
