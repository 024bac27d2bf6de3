"""`hemo-torchrun` hands the orchestrator the worker's own exit code, so the retry decision the
exit-code table makes (3 retried; 1, 2, 70 not) survives the torchrun launcher the docker runner
and the training pods start train/refine with. torchrun itself exits 1 for every failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from hemo_pipeline.exit_codes import EXIT_INTERNAL, EXIT_TRANSIENT, EXIT_USER, NO_RETRY_EXIT_CODES
from hemo_pipeline.orchestration.runners import torchrun_entrypoint
from hemo_pipeline.torchrun_launch import root_cause_code, worker_exit_code

LAUNCHER = str(Path(sys.executable).with_name("hemo-torchrun"))


def _launch(worker_code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The docker runner's launcher options, with a Python worker in place of `hemo`."""
    options = torchrun_entrypoint("1")[1:-1]  # between the launcher and `hemo`
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([LAUNCHER, *options, sys.executable, "-c", worker_code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("code", [0, EXIT_USER, EXIT_TRANSIENT, EXIT_INTERNAL])
def test_the_launcher_exits_with_the_workers_code(code: int, tmp_path: Path) -> None:
    result = _launch(f"import sys; sys.exit({code})", tmp_path)
    assert result.returncode == code, result.stderr[-2000:]
    if code:
        assert f"worker exited {code}" in result.stderr  # torchrun's own failure report is kept too
        assert "Root Cause" in result.stderr


def test_a_transient_worker_failure_stays_retryable(tmp_path: Path) -> None:
    """The case that failed DAG runs for good: a step that met a failing server exits 3."""
    result = _launch(f"import sys; sys.exit({EXIT_TRANSIENT})", tmp_path)
    assert result.returncode not in NO_RETRY_EXIT_CODES


def test_a_worker_killed_by_a_signal_reads_as_a_shell_reports_it(tmp_path: Path) -> None:
    result = _launch("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", tmp_path)
    assert result.returncode == 128 + signal.SIGKILL, result.stderr[-2000:]
    assert "(SIGKILL)" in result.stderr
    assert result.returncode not in NO_RETRY_EXIT_CODES  # an OOM kill or a preemption: retried


def test_a_stopped_launcher_exits_128_plus_the_signal(tmp_path: Path) -> None:
    """`docker stop` / a pod eviction sends SIGTERM to the launcher (PID 1 in the container)."""
    options = torchrun_entrypoint("1")[1:-1]
    ready = tmp_path / "worker-started"
    worker = f"import pathlib, time; pathlib.Path({str(ready)!r}).touch(); time.sleep(120)"
    process = subprocess.Popen([LAUNCHER, *options, sys.executable, "-c", worker], cwd=tmp_path,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert process.returncode not in NO_RETRY_EXIT_CODES


def _failure(exitcode: int, timestamp: int, rank: int) -> SimpleNamespace:
    return SimpleNamespace(exitcode=exitcode, timestamp=timestamp, local_rank=rank)


def test_the_root_cause_is_the_killed_worker_not_a_survivor() -> None:
    killed, stopped = _failure(-9, 100, 1), _failure(-15, 100, 0)
    # seen in make test: the agent SIGTERMs the survivor (rank 0) as it stops the group; torchrun's
    # root cause is the SIGKILLed rank 1
    assert root_cause_code(killed, [stopped, killed]) == 128 + 9
    # torchrun's whole-second timestamps name the survivor's 70 from the broken collective first
    survivor = _failure(EXIT_INTERNAL, 100, 0)
    assert root_cause_code(survivor, [survivor, killed]) == 128 + 9
    assert root_cause_code(survivor, [survivor, _failure(EXIT_TRANSIENT, 101, 1)]) == EXIT_TRANSIENT
    # nothing retryable anywhere: torchrun's root cause stands
    bad_input = _failure(EXIT_USER, 100, 1)
    assert root_cause_code(bad_input, [bad_input, survivor]) == EXIT_USER


def test_worker_exit_code() -> None:
    assert worker_exit_code(3) == 3
    assert worker_exit_code(-15) == 128 + 15
    assert worker_exit_code(0) == 1  # torchrun reported a failure: never exit 0 for it
