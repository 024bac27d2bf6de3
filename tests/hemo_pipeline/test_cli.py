"""The `hemo` console script: one entry, every step has working --help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hemo_pipeline.cli import STEPS

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


@pytest.mark.parametrize("step", sorted(STEPS))
def test_each_steps_help_line_is_its_modules_docstring(step: str) -> None:
    """The help line lives beside the module path (so `hemo --help` imports no step); it must stay
    the first line of the step's own docstring."""
    import importlib

    module_path, summary = STEPS[step]
    assert (importlib.import_module(module_path).__doc__ or "").strip().splitlines()[0] == summary


PROBE = """
import json, sys
from hemo_pipeline import cli
try:
    cli.main(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in sys.modules if m.startswith(("hemo_pipeline.steps.", "torch", "mlflow",
                                                                "great_expectations")))))
"""


def test_hemo_imports_only_the_step_that_was_asked_for() -> None:
    import json

    def imported(*args: str) -> set[str]:
        out = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=300)
        return set(json.loads(out.stdout.strip().splitlines()[-1]))

    assert imported("--help") == set()  # the listing: no step, nothing heavy
    split = imported("split", "--help")
    assert {m for m in split if m.startswith("hemo_pipeline.steps.")} == {"hemo_pipeline.steps.split"}
    assert not any(m.startswith(("torch", "mlflow", "great_expectations")) for m in split)
    train = imported("train", "--help")
    assert {m for m in train if m.startswith("hemo_pipeline.steps.")} == {"hemo_pipeline.steps.train"}
