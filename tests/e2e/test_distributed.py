"""`hemo train` under torchrun on the CPU (gloo), end to end: two workers train the real network,
and a worker killed mid-run is restarted by torchrun and resumes from the last finished epoch.

That data-parallel training takes the same steps as one process is checked exactly, and fast, in
tests/hemo_model/test_distributed.py; here BatchNorm's per-process statistics and per-rank
augmentation make the curves agree only in trend, so this test checks the launch, the restart and
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

from tests.conftest import read_until, step_env

HEMO = str(Path(sys.executable).with_name("hemo"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ARGS = ["train", "--device", "cpu", "--set", "train.lr=0.001", "--set", "data.workers=0"]
TIMEOUT_S = 600
GROUP_TIMEOUT_S = 120
"""A rank stuck on a peer fails after this (HEMO_DIST_TIMEOUT_S) and torchrun restarts the group,
instead of gloo's default 30 minutes; a rank never waits this long for rank 0 here."""
MAX_RESTARTS = 3
"""As an elastic job would set it: besides the kill, a restarted group's gloo rendezvous can fail
to connect on a loaded machine (seen once under two test workers) and is then simply retried."""


def _workers(torchrun_pid: int) -> list[int]:
    """torchrun --standalone runs the elastic agent in its own process: the workers are its children."""
    return [int(p) for p in subprocess.run(["ps", "-o", "pid=", "--ppid", str(torchrun_pid)], capture_output=True,
                                           text=True, timeout=30).stdout.split()]


@pytest.mark.slow
def test_a_killed_worker_is_restarted_and_resumes(workdir: Path) -> None:
    # small global batches: an epoch long enough to kill a worker in the middle of epoch 2
    process = subprocess.Popen([TORCHRUN, "--standalone", "--nproc_per_node", "2", "--max-restarts", str(MAX_RESTARTS), HEMO, *ARGS,
                                "--epochs", "3", "--batch-size", "4", "--max-steps", "30"], cwd=workdir,
                               env=step_env(HEMO_DIST_TIMEOUT_S=str(GROUP_TIMEOUT_S)),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = read_until(process, "epoch 1: loss", TIMEOUT_S / 2)  # rank 0 has written epoch 1's checkpoint
    time.sleep(0.5)
    workers = _workers(process.pid)
    assert len(workers) == 2, "".join(lines)[-3000:]
    os.kill(workers[-1], signal.SIGKILL)
    try:
        rest, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        rest, _ = process.communicate()
        pytest.fail(f"torchrun did not finish within {TIMEOUT_S} s after a worker was killed:\n"
                    + ("".join(lines) + rest)[-4000:])
    output = "".join(lines) + rest
    assert process.returncode == 0, output[-4000:]
    epochs = [f"epoch {n}" for n in re.findall(r"epoch (\d+): loss", output)]
    assert epochs == ["epoch 1", "epoch 2", "epoch 3"], output[-3000:]  # epoch 1 was not trained again
    with (workdir / "reports/train_history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [row["epoch"] for row in history] == ["1", "2", "3"]
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])  # and it learns
    assert (workdir / "outputs/train/best.pt").is_file() and (workdir / "outputs/train/last.pt").is_file()
