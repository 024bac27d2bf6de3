"""`hemo sync-data`: pull exactly data.dvc; nothing to pull without a remote (result `skipped`); a
remote that lacks the data is a user error (exit 2, one line), never a retry loop."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run_ok, step_env

DVC = str(Path(sys.executable).with_name("dvc"))
HEMO = str(Path(sys.executable).with_name("hemo"))


@pytest.fixture
def project(tiny_data: Path, tmp_path: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(tiny_data, root / "data")
    for args in (["git", "init", "-q"], [DVC, "init", "-q"], [DVC, "config", "core.analytics", "false"],
                 [DVC, "add", "-q", "data"]):
        run_ok(args, root, timeout=300)
    return root


def _sync(project: Path, result: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HEMO, "sync-data", "--project", str(project)], capture_output=True, text=True, timeout=300,
                          env=step_env(HEMO_RESULT_FILE=str(result)))


def test_without_a_remote_there_is_nothing_to_pull(project: Path, tmp_path: Path) -> None:
    done = _sync(project, tmp_path / "result.json")
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["skipped"] is True and "no DVC remote" in result["reason"]


def test_pulls_the_versioned_data_from_the_remote(project: Path, tmp_path: Path) -> None:
    run_ok([DVC, "remote", "add", "-d", "store", str(tmp_path / "store")], project)
    run_ok([DVC, "push", "-q", "data.dvc"], project, timeout=300)
    shutil.rmtree(project / "data")
    done = _sync(project, tmp_path / "result.json")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "result.json").read_text()) == {"step": "sync-data", "skipped": False,
                                                                   "remote": "store"}
    assert (project / "data" / "train.csv").is_file()


def test_a_remote_without_the_data_is_a_user_error(project: Path, tmp_path: Path) -> None:
    run_ok([DVC, "remote", "add", "-d", "empty", str(tmp_path / "empty")], project)
    shutil.rmtree(project / "data")
    shutil.rmtree(project / ".dvc" / "cache", ignore_errors=True)
    done = _sync(project, tmp_path / "result.json")
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(errors) == 1, done.stderr[-2000:]
    assert "remote 'empty'" in errors[0] and "dvc push data.dvc" in errors[0]
    assert not (tmp_path / "result.json").exists()
