"""The `hemo` console script: one entry, every step has working --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.cli import STEPS

HEMO = str(Path(sys.executable).with_name("hemo"))


def test_top_level_help_lists_every_step() -> None:
    out = subprocess.run([HEMO, "--help"], check=True, capture_output=True, text=True, timeout=120).stdout
    for step in STEPS:
        assert step in out


@pytest.mark.parametrize("step", sorted(STEPS))
def test_step_help(step: str) -> None:
    result = subprocess.run([HEMO, step, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and f"usage: hemo {step}" in result.stdout


def test_unknown_step_fails() -> None:
    result = subprocess.run([HEMO, "frobnicate"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_synth_refuses_to_overwrite(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "keep.txt").write_text("precious")
    result = subprocess.run([HEMO, "synth", "--out", str(tmp_path / "data"), "--train-patients", "1",
                             "--test-patients", "0", "--image-size", "32"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "not empty" in result.stderr
    assert (tmp_path / "data" / "keep.txt").read_text() == "precious"
