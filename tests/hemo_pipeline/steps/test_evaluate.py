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
    out = capsys.readouterr().out
    assert "evaluate: served with its context (gate micro-F2 " in out and "): val role too small" in out
    assert tuple(_registered_spec(workdir).context_weights) == CONTEXT_WEIGHTS
    calibration = report["calibration"]
    assert set(calibration["temperatures"]) == {"ich", "ivh", "sah", "sdh", "edh"}
    assert all(0 <= calibration[k] <= 1 for k in ("ece_slice_raw", "ece_slice_calibrated", "ece_exam_raw",
                                                  "ece_exam_calibrated"))
    assert calibration["n_gate_exams"] == report["patients"]["gate"]
    # the floor a perfectly calibrated model would read on as few exams, to judge the ECE by
    assert 0 < calibration["ece_exam_calibrated_floor"] < calibration["ece_exam_calibrated_floor_p95"] < 1
    assert "a perfectly calibrated model would read" in out
    assert (workdir / "reports/plots/reliability.png").is_file()
    assert "evaluate: calibration on the gate patients as served" in out
    # the calibration fitted on val travels in the registered spec, for the served mode
    stored = _registered_spec(workdir).calibration
    assert stored is not None and stored.mode == "context" and stored.n_exams == report["patients"]["val"]
    assert tuple(calibration["temperatures"].values()) == stored.slice_temperatures
    assert report["triage_on_gate"]["exams"] == report["patients"]["gate"]
    assert "evaluate: triage cut-offs fitted on " in out
    markdown = (workdir / "reports/triage_report.md").read_text()
    assert "Bleeds that reached low risk: " in markdown
    # the phantom's scanners (subgroups.csv): every exam-level figure again per scanner, in the
    # JSON, the report and the output, the groups adding up to the gate exams
    groups = report["subgroups_on_gate"]
    assert groups and {g["column"] for g in groups} == {"scanner"}
    assert sum(g["exams"] for g in groups) == report["patients"]["gate"]
    assert all({"sensitivity_interval", "ece_exam_calibrated", "triage"} <= set(g) for g in groups)
    assert sum(line.startswith("| scanner = ") for line in markdown.splitlines()) == len(groups)
    assert out.count("evaluate: by subgroup, scanner ") == len(groups)
    # the phantom outlines its lesions (data/masks): the overlays' maps are checked on the gate
    # exams, one per exam and flagged type, and the figures reach the JSON, the report and MLflow
    # (which maps a 2-step model's flags give is chance: tests/hemo_pipeline/services/test_pointing_report.py
    # checks the game itself)
    pointing = report["pointing_on_gate"]
    assert pointing["status"] == "played", pointing
    assert pointing["outlined_gate_patients"] >= 1 and pointing["tolerance_px"] == pytest.approx(64 * 15 / 224)
    rows = pointing["classes"]
    assert all(r["hits"] <= r["maps"] and r["exact_hits"] <= r["hits"] for r in rows.values())
    assert all(r["maps"] + r["off_lesion"] <= pointing["outlined_gate_patients"] for r in rows.values())
    assert "## Do the overlays point at the bleed?" in markdown and "evaluate: pointing game on " in out
    assert (workdir / "reports/plots/pointing.png").is_file() == any(r["maps"] for r in rows.values())
    from mlflow import MlflowClient

    run_id = json.loads((workdir / "outputs/challenger.json").read_text())["run_id"]
    logged = MlflowClient().get_run(run_id).data.metrics
    assert {f"pointing_hit_rate_{c}" for c, r in rows.items() if r["maps"]} <= set(logged)
    artifacts = {a.path for a in MlflowClient().list_artifacts(run_id, "evaluation")}
    assert "evaluation/pointing.json" in artifacts

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


def test_a_version_served_on_single_slices_scores_single_slices_at_their_thresholds(
        workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever val says on tiny data, force the single-slice decision and check what is registered
    is served that way: with score.context 5 it gives the single-slice probabilities and decisions at
    the single-slice thresholds."""
    import numpy as np
    import torch

    from hemo_model.data.patients import load_split
    from hemo_pipeline.services.context_choice import ContextChoice
    from hemo_pipeline.services.serving import serve
    from hemo_pipeline.services.settings import ScoreSettings
    from hemo_pipeline.steps import evaluate

    monkeypatch.setattr(evaluate, "choose_context", lambda *args: ContextChoice(False, "forced by the test"))
    assert main(["train", "--max-steps", "2"]) == 0
    assert main(["evaluate", "--model", "outputs/train/best.pt", "--set", "evaluate.min_tune_positives=0",
                 "--set", "evaluate.min_tune_patients=0"]) == 0
    report = json.loads((workdir / "reports/evaluate.json").read_text())
    assert report["served_with_context"] is False
    assert report["micro_f2_served_tuned"] == report["micro_f2_single_tuned"]
    spec = _registered_spec(workdir)
    assert spec.context_weights == (1.0,) and spec.thresholds == spec.thresholds_single
    assert list(spec.thresholds_single) == [report["thresholds_single"][c] for c in report["thresholds_single"]]

    from hemo_pipeline.services import registry

    loaded = registry.load_model(f"models:/{registry.MODEL_NAME}/"
                                 + json.loads((workdir / "outputs/challenger.json").read_text())["version"])
    patients = load_split(Path("data"), "train")[:2]
    five, one = (serve(loaded, patients, ScoreSettings(context=c), torch.device("cpu")) for c in (5, 1))
    assert five.thresholds == one.thresholds == list(spec.thresholds_single)
    for a, b in zip(five.probabilities(), one.probabilities()):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert all(np.array_equal(a, b) for a, b in zip(five.decisions(), one.decisions()))
    # its calibration was fitted on single-slice scores, and applies in both scoring modes
    assert spec.calibration is not None and spec.calibration.mode == "single"
    assert five.calibration == one.calibration == spec.calibration


def test_a_bad_lesion_mask_is_refused_before_any_scoring(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed mask of a gate patient ends evaluate in one line naming the file and both ways
    out, before minutes of scoring; with the pointing game off the same data evaluates."""
    import shutil

    from PIL import Image

    assert main(["train", "--max-steps", "2"]) == 0
    data = workdir / "data-with-bad-mask"
    shutil.copytree(workdir / "data", data, symlinks=True)
    for patient in (data / "train").iterdir():  # every patient, so the gate's are among them
        folder = data / "masks" / patient.name
        folder.mkdir(parents=True, exist_ok=True)
        Image.new("L", (64, 64), 99).save(folder / f"{patient.name[3:]}_0.png")  # 99: not a set of class bits
    capsys.readouterr()
    code = main(["evaluate", "--data", str(data), "--model", "outputs/train/best.pt", "--no-register"])
    err = capsys.readouterr().err
    assert code == 2 and not (workdir / "reports/evaluate.json").exists()
    assert len(err.strip().splitlines()) == 1, err  # one line, and no scoring progress before it
    assert "_0.png: value 99 is not a set of the 5 class bits" in err
    assert "hemo validate" in err and "evaluate.pointing_slices=0" in err
    assert main(["evaluate", "--data", str(data), "--model", "outputs/train/best.pt", "--no-register",
                 "--set", "evaluate.pointing_slices=0"]) == 0
    report = json.loads((workdir / "reports/evaluate.json").read_text())
    assert report["pointing_on_gate"]["status"].startswith("off")
