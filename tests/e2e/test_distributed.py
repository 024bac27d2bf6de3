"""`hemo train` under torchrun on the CPU (gloo): two processes with the same global batch follow
one process's loss curve, and a worker killed mid-run is restarted by torchrun and resumes from
the last finished epoch."""

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

HEMO = str(Path(sys.executable).with_name("hemo"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ARGS = ["train", "--device", "cpu", "--batch-size", "16", "--max-steps", "3", "--set", "train.lr=0.001"]
TOLERANCE = 0.25
MEAN_TOLERANCE = 0.10
"""Largest relative difference of an epoch's training loss (and of the mean over the epochs)
between 1 and 2 processes: each rank normalises its own half batch (BatchNorm statistics are per
process on the CPU) and draws its own augmentation, and with 3 steps per epoch that noise is large;
the curves agree in level and trend, not to the bit."""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HEMO_PARENT_RUN_ID")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _losses(workdir: Path, reports: str) -> list[float]:
    with (workdir / reports / "train_history.csv").open() as handle:
        return [float(row["train_loss"]) for row in csv.DictReader(handle)]


@pytest.mark.slow
def test_two_processes_follow_one_process(workdir: Path) -> None:
    one = subprocess.run([HEMO, *ARGS, "--epochs", "3", "--out", "outputs/one", "--reports", "r1"], cwd=workdir,
                         env=_env(), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", HEMO, *ARGS, "--epochs", "3",
                          "--out", "outputs/two", "--reports", "r2"], cwd=workdir, env=_env(), capture_output=True,
                         text=True, timeout=900)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    single, parallel = _losses(workdir, "r1"), _losses(workdir, "r2")
    differences = [abs(a - b) / a for a, b in zip(single, parallel)]
    print(f"train loss per epoch, 1 process {single}, 2 processes {parallel}; relative differences "
          f"{[round(d, 3) for d in differences]}")
    assert len(parallel) == 3 and max(differences) < TOLERANCE
    assert abs(sum(single) - sum(parallel)) / sum(single) < MEAN_TOLERANCE
    assert parallel[-1] < parallel[0]  # and it learns
    assert (workdir / "outputs/two/best.pt").is_file() and (workdir / "outputs/two/last.pt").is_file()


def _descendants(pid: int) -> list[int]:
    children = [int(p) for p in subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True,
                                               text=True).stdout.split()]
    return children + [d for child in children for d in _descendants(child)]


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_resumes(workdir: Path) -> None:
    # small batches: an epoch long enough (~15 steps per rank) to kill a worker in the middle of it
    process = subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node", "2", "--max-restarts", "1", HEMO, *ARGS,
                                "--epochs", "3", "--batch-size", "4", "--max-steps", "100"], cwd=workdir, env=_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "epoch 1: loss" in line:  # rank 0 has written epoch 1's checkpoint
            break
    time.sleep(0.5)
    victim = max(_descendants(process.pid))  # the workers are torchrun's children, started after the agent
    os.kill(victim, signal.SIGKILL)
    rest, _ = process.communicate(timeout=900)
    output = "".join(lines) + rest
    assert process.returncode == 0, output[-4000:]
    epochs = [f"epoch {n}" for n in re.findall(r"epoch (\d+): loss", output)]
    assert epochs == ["epoch 1", "epoch 2", "epoch 3"], output[-3000:]  # epoch 1 was not trained again
    with (workdir / "reports/train_history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]
