"""`dvc repro` of the real dvc.yaml on tiny data: it runs every stage, `dvc status` is then clean,
and a change to the library makes every stage that runs library code stale, down to scoring
(not only the one whose checkpoint file changes)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_PARAMS, dvc_params, run_ok

REPO = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).with_name("dvc"))
STAGES = ["validate", "train", "refine", "evaluate", "gate", "score", "finish"]


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_ok(args, cwd)


def _stale(project: Path) -> set[str]:
    status = json.loads(_run([DVC, "status", "--json"], project).stdout or "{}")
    return {name.split(":")[-1] for name in status}


@pytest.mark.slow
def test_repro_is_complete_and_never_stale(pipeline_data: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, project / name)
    for package in ("hemo_model", "hemo_pipeline"):
        shutil.copytree(REPO / package, project / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(pipeline_data, project / "data")
    (project / "params.yaml").write_text(dvc_params(TINY_PARAMS))
    _run(["git", "init", "-q"], project)
    _run([DVC, "init", "-q"], project)
    _run([DVC, "config", "core.autostage", "false"], project)

    first = _run([DVC, "repro"], project)
    assert all(f"Running stage '{stage}'" in first.stdout for stage in STAGES), first.stdout[-3000:]
    assert (project / "outputs/predictions.csv").is_file()
    assert _stale(project) == set()

    # A change to the library (here: to the context code that only refinement exercises) makes every
    # stage that runs library code stale, although training would reproduce the same best.pt.
    with (project / "hemo_model" / "context.py").open("a") as handle:
        handle.write("\n# a change to the library\n")
    assert _stale(project) >= {"validate", "train", "refine", "evaluate", "gate", "score"}
    again = _run([DVC, "repro", "--dry"], project)  # what `dvc repro` would run now (running it again costs a minute)
    assert all(f"Running stage '{stage}'" in again.stdout for stage in ("refine", "evaluate", "gate", "score"))
