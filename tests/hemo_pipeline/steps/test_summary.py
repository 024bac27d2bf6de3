"""`hemo summary`: the exam-level figures evaluate wrote, and the triage bins score wrote."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hemo_pipeline.cli import main


def test_summary_shows_exam_sensitivity_calibration_and_triage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    reports, outputs = tmp_path / "reports", tmp_path / "outputs"
    reports.mkdir()
    outputs.mkdir()
    (reports / "evaluate.json").write_text(json.dumps({
        "micro_f2_single": 0.6, "micro_f2_context": 0.65, "micro_f2_context_tuned": 0.66,
        "exam_decisions_on_gate": {"exams": 12, "positives": 8, "negatives": 4, "true_positives": 7,
                                   "true_negatives": 3, "sensitivity_interval": [0.47, 0.99],
                                   "specificity_interval": [0.19, 0.99]},
        "calibration": {"ece_slice_raw": 0.31, "ece_slice_calibrated": 0.04, "ece_exam_raw": 0.32,
                        "ece_exam_calibrated": 0.09, "stored_with_model": True,
                        "ece_exam_calibrated_floor": 0.071, "ece_exam_calibrated_floor_p95": 0.112},
        "triage_on_gate": {"exams": 12, "positives": 8, "positives_low_risk": 1, "deferred": 5,
                           "low_risk_false_negative_rate_interval": [0.003, 0.53],
                           "deferral_fraction_interval": [0.15, 0.72]},
        "subgroups_on_gate": [{"column": "scanner", "value": "GE", "exams": 5, "positives": 3, "negatives": 2,
                               "true_positives": 3, "true_negatives": 0, "sensitivity_interval": [0.29, 1.0],
                               "specificity_interval": [0.0, 0.84], "ece_exam_calibrated": 0.12},
                              {"column": "scanner", "value": "other", "exams": 1, "positives": 0, "negatives": 1,
                               "true_positives": 0, "true_negatives": 1, "sensitivity_interval": [None, None],
                               "specificity_interval": [0.025, 1.0], "ece_exam_calibrated": None}],
        "pointing_on_gate": {"status": "played", "classes": {
            "ich": {"hits": 4, "maps": 5, "hit_rate_interval": [0.284, 0.995]},
            "edh": {"hits": 0, "maps": 0, "hit_rate_interval": [None, None]}}}}))
    (outputs / "predictions.csv").write_text("dirname,ID,ich,ivh,sah,sdh,edh\nID_a,a_0.jpg,0,0,0,0,0\n")
    (outputs / "exams.csv").write_text("dirname,triage\nID_a,high_risk\nID_b,defer\nID_c,defer\n")
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "exams (gate, 12): sensitivity 7/8 = 0.875 [0.470, 0.990], specificity 3/4 = 0.750" in out
    assert ("calibration (ECE, gate): slices 0.3100 -> 0.0400, exams 0.3200 -> 0.0900 (a perfectly calibrated "
            "model: 0.0710, 95 % below 0.1120)") in out
    assert "triage (gate): bleeds called low risk 1/8 = 0.125 [0.003, 0.530], deferred 5/12 = 0.417" in out
    assert "  scanner GE (5 exams): sensitivity 3/3 = 1.000 [0.290, 1.000], specificity 0/2 = 0.000" in out
    assert "  scanner other (1 exams): sensitivity n/a, specificity 1/1 = 1.000 [0.025, 1.000]\n" in out
    assert "overlays point at the lesion (pointing game, gate): ich 4/5 = 0.800 [0.284, 0.995]\n" in out
    assert "exams: outputs/exams.csv (3 exams: 1 high_risk, 2 defer, 0 low_risk)" in out
