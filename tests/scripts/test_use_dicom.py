"""scripts/use_dicom.sh's PRIVATE and DICOMWEB_URL arguments: the values become part of the
commands in dvc.yaml that DVC runs through a shell, and the folder holds what names patients, so
the script refuses what would leak or break them (before it touches the project) and writes a
report stage with exactly the push it was given. `tests/e2e/test_dvc_dicom.py` runs the stage."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "use_dicom.sh"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A DVC project with a raw DICOM folder of the script's layout (empty: nothing is imported here)."""
    project = tmp_path / "project"
    for folder in ("raw/train", "raw/test"):
        (project / folder).mkdir(parents=True)
        (project / folder / "keep").write_text("")
    (project / "raw/train_labels.csv").write_text("ID,Label\n")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    return project


def _script(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), "raw", *args], cwd=project, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def _refused(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and words in lines[0], result.stderr


@pytest.mark.parametrize(("private", "url", "env", "words"), [
    ("private dir", "", {}, "holds a space"),
    ("private", "https://pacs.example/dicom-web;touch${IFS}x", {}, "a shell would read"),
    ("private", "https://user:secret@pacs.example/dicom-web", {}, "holds credentials"),
    ("private", "http://127.0.0.1:8042/dicom-web", {}, "plain http"),
    ("private", "ftp://pacs.example/dicom-web", {}, "must be an https://"),
    ("project/inside", "", {}, "inside the project"),
])
def test_what_would_leak_or_break_the_stage_command_is_refused_in_one_line(
        project: Path, private: str, url: str, env: dict[str, str], words: str) -> None:
    where = str(project.parent / private) if private != "project/inside" else "inside"
    result = _script(project, where, *([url] if url else []), **env)
    _refused(result, words)
    assert "secret" not in result.stderr  # the credentials are named, never shown
    assert not (project / "dvc.yaml").exists()  # refused before anything changed
    assert sorted(p.name for p in project.iterdir()) == [".git", "raw"]
    assert not (project.parent / private).exists()


def test_a_private_folder_open_to_others_is_refused_not_chmodded(project: Path) -> None:
    shared = project.parent / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    _refused(_script(project, str(shared)), "open to others")
    assert shared.stat().st_mode & 0o777 == 0o755


def test_the_report_stage_pushes_where_it_was_told_and_finish_waits_for_it(project: Path) -> None:
    subprocess.run([str(REPO / ".venv/bin/dvc"), "init", "-q"], cwd=project, check=True, timeout=120)
    env = {"PATH": f"{REPO / '.venv/bin'}:{os.environ['PATH']}", "HEMO_ALLOW_HTTP": "1"}
    result = _script(project, str(project.parent / "private"), "HTTP://127.0.0.1:8042/dicom-web", **env)
    assert result.returncode == 0, result.stdout + result.stderr
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    private = (project.parent / "private").resolve()
    assert private.stat().st_mode & 0o777 == 0o700
    assert f"--mapping {private}/test_mapping.csv" in stages["import-test"]["cmd"]
    assert stages["report"]["cmd"].endswith(f"--out {private}/results --reports reports "
                                            "--push HTTP://127.0.0.1:8042/dicom-web --allow-http")
    assert "reports/report.json" in stages["finish"]["deps"]

    again = _script(project, **env)  # without PRIVATE: no report stage is left behind
    assert again.returncode == 0, again.stdout + again.stderr
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    assert "report" not in stages and stages["finish"]["deps"] == ["outputs/predictions.csv"]
    assert "--mapping" not in stages["import-test"]["cmd"]
