"""The uid contract of the container runners, run for real: the steps run as another uid (as a
container would, `setpriv`) in a run folder that root created, and a third uid (the Airflow
worker) must be able to read every output it needs."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from hemo_pipeline.orchestration.runners import StepSettings, run_local
from tests.conftest import TINY_PARAMS

STEP_UID, WORKER_UID = 1000, 1001
HEMO = str(Path(sys.executable).with_name("hemo"))


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to switch uid")
def test_steps_as_another_uid_leave_outputs_the_worker_can_read(pipeline_data: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="hemo-perm-"))
    try:
        base.chmod(0o755)
        project = base / "project"
        shutil.copytree(pipeline_data, project / "data")
        (project / "params.yaml").write_text(TINY_PARAMS)
        for path in [project, *project.rglob("*")]:
            path.chmod(0o755 if path.is_dir() else 0o644)
        store = base / "mlflow"
        store.mkdir(mode=0o777)
        store.chmod(0o777)
        runs = base / "runs"
        runs.mkdir()  # root-owned, as a Docker daemon or an init container would leave it
        wrapper = base / "hemo-as-step-uid"
        wrapper.write_text(f"#!/bin/sh\nexec setpriv --reuid {STEP_UID} --regid {STEP_UID} --clear-groups {HEMO} \"$@\"\n")
        wrapper.chmod(0o755)
        settings = StepSettings(project_dir=project, run_dir=runs / "manual__1", mlflow_uri=f"sqlite:///{store}/mlflow.db",
                                dag_run_id="manual__1", overrides={"epochs": 1}, uid=STEP_UID, gid=STEP_UID,
                                extra_env={"HOME": str(store), "OMP_NUM_THREADS": "1"})
        started = run_local("start-run", settings, hemo_bin=str(wrapper))
        settings.parent_run_id = started["run_id"]
        for step, extra in (("validate", ()), ("train", ("--max-steps", "1")), ("refine", ("--max-steps", "1")),
                            ("evaluate", ()), ("gate", ()), ("score", ())):
            run_local(step, settings, hemo_bin=str(wrapper), extra_args=extra)

        run_dir = settings.run_dir
        assert run_dir.stat().st_uid == STEP_UID
        written = [p for p in run_dir.rglob("*") if p.is_file()]
        assert {p.stat().st_uid for p in written} == {STEP_UID}  # the step really wrote as the other uid
        needed = [run_dir / ".hemo-results" / "gate.json", run_dir / "reports" / "gate.json",
                  run_dir / "outputs" / "predictions.csv", run_dir / "reports" / "evaluate.json"]
        assert all(p.is_file() for p in needed)
        unreadable = [str(p) for p in written if not p.stat().st_mode & stat.S_IROTH]
        assert unreadable == [], "outputs the worker (another uid) cannot read"
        for path in needed:  # and really read them as a third uid
            read = subprocess.run(["setpriv", "--reuid", str(WORKER_UID), "--regid", str(WORKER_UID), "--clear-groups",
                                   "cat", str(path)], capture_output=True, timeout=60)
            assert read.returncode == 0, read.stderr
    finally:
        shutil.rmtree(base, ignore_errors=True)
