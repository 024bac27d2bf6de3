"""`hemo evaluate`: the serving mode it stores with the registered version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hemo_model.model.spec import CONTEXT_WEIGHTS
from hemo_pipeline.cli import main


def _registered_spec(workdir: Path):  # noqa: ANN202 - a ModelSpec
    from hemo_pipeline.services import registry, tracking

    tracking.configure()
    version = json.loads((workdir / "outputs/challenger.json").read_text())["version"]
    return registry.load_model(f"models:/{registry.MODEL_NAME}/{version}").spec


def test_single_slices_are_served_only_where_val_can_tell_they_score_higher(
        workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--max-steps", "2"]) == 0
    # the tiny val role (2 patients) cannot tell: the method's filter is kept, and the line says why
    assert main(["evaluate", "--model", "outputs/train/best.pt"]) == 0
    report = json.loads((workdir / "reports/evaluate.json").read_text())
    assert report["served_with_context"] is True and "too small to choose on" in report["context_choice"]
    assert "served with its context: val role too small" in capsys.readouterr().out
    assert tuple(_registered_spec(workdir).context_weights) == CONTEXT_WEIGHTS

    # let the same val role decide: the stored mode follows the val comparison at tuned thresholds
    assert main(["evaluate", "--model", "outputs/train/best.pt", "--set", "selection.min_val_patients=1",
                 "--set", "selection.min_val_positives=0"]) == 0
    report = json.loads((workdir / "reports/evaluate.json").read_text())
    single_wins = report["val_micro_f2_single_tuned"] > report["val_micro_f2_context_tuned"]
    assert report["served_with_context"] is (not single_wins)
    spec = _registered_spec(workdir)
    if single_wins:
        assert spec.context_weights == (1.0,) and spec.thresholds == spec.thresholds_single
    else:
        assert tuple(spec.context_weights) == CONTEXT_WEIGHTS
