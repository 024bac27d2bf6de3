"""The calibration report: temperatures fitted on val, ECE judged on the gate, per slice and exam,
in the mode the version is served in."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from hemo_pipeline.services.calibration_report import (
    calibration_report,
    reliability_figure,
    subgroup_lines,
    subgroup_report,
    triage_line,
    triage_markdown,
)


def _patients(n: int, seed: int, sharpen: float) -> list[SimpleNamespace]:
    """Sequences of 20 slices whose labels are drawn from sigmoid(u) and whose served (context)
    logits are u * sharpen (overconfident when > 1); the single-slice logits are useless (0). Half
    the patients are unlikely to bleed at all, so exams are positive and negative."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        u = rng.normal(rng.choice([-6.0, -1.0]), 2.0, size=(20, 5))
        labels = (rng.uniform(size=u.shape) < 1 / (1 + np.exp(-u))).astype(float)
        out.append(SimpleNamespace(patient=SimpleNamespace(labels=labels, dirname=f"ID_{seed}x{i:03d}"), logits=u * sharpen,
                                   slice_logits=np.zeros_like(u)))
    return out


def test_platt_scaling_from_val_lowers_the_gate_calibration_error_of_overconfident_scores() -> None:
    report = calibration_report(_patients(200, 0, 3.0), _patients(200, 1, 3.0), True, 0.05, 0.1, [0.5] * 5)
    assert all(t == pytest.approx(3.0, rel=0.15) for t in report.temperatures)
    assert all(abs(b) < 0.5 for b in report.shifts)  # no shift was applied
    m = report.metrics
    assert m["ece_slice_calibrated"] < m["ece_slice_raw"] / 3
    assert m["ece_exam_calibrated"] < m["ece_exam_raw"] / 2  # the exam columns have their own scaling
    assert (m["n_calibration_slices"], m["n_calibration_exams"], m["n_gate_slices"], m["n_gate_exams"]) == (
        4000, 200, 4000, 200)
    assert report.exam_labels.shape == (200, 6)
    assert (report.exam_labels[:, 0] == report.exam_labels[:, 1:].max(axis=1)).all()  # any = some class
    assert reliability_figure(report) is not None


def test_the_served_mode_is_the_one_judged() -> None:
    """Single-slice logits of 0 say 0.5 everywhere: calibrated, a constant score can only become the
    class's rate on val."""
    val = _patients(50, 2, 3.0)
    report = calibration_report(val, _patients(50, 3, 3.0), False, 0.05, 0.1, [0.5] * 5)
    rates = np.concatenate([p.patient.labels for p in val]).mean(axis=0)
    assert np.allclose(report.slice_probs["raw"], 0.5)
    assert np.allclose(report.slice_probs["calibrated"], rates, atol=1e-3)


def test_the_triage_report_counts_the_gate_exams_it_names() -> None:
    """The bins on the gate exams are the stored cut-offs' (checked exam by exam), the counts in the
    line and the markdown are those exams', and a bleed called low risk is counted as one."""
    report = calibration_report(_patients(120, 4, 2.0), _patients(80, 5, 2.0), True, 0.1, 0.1, [0.5] * 5)
    c, t = report.calibration, report.triage
    p_any = report.exam_probs["calibrated"][:, 0]
    expected = np.where(p_any < c.low_risk_below, "low_risk", np.where(p_any > c.high_risk_above, "high_risk", "defer"))
    assert (report.exam_bins == expected).all()
    bleeding = report.exam_labels[:, 0].astype(bool)
    assert t["positives_low_risk"] == int(((report.exam_bins == "low_risk") & bleeding).sum())
    assert t["exams"] == 80 and t["positives"] == int(bleeding.sum())
    assert c.low_risk_below > 0  # enough bleeding val exams at 10 %: the bin is open
    line = triage_line(report)
    assert f"on the 80 gate exams bleeds called low risk {t['positives_low_risk']}/{t['positives']}" in line
    text = triage_markdown(report, stored=True)
    assert f"Bleeds that reached low risk: {t['positives_low_risk']} of {t['positives']}" in text
    assert sum(row.startswith("| ID_5x") for row in text.splitlines()) == 80


def test_too_few_bleeding_val_exams_say_how_many_are_needed() -> None:
    report = calibration_report(_patients(12, 6, 2.0), _patients(10, 7, 2.0), True, 0.05, 0.1, [0.5] * 5)
    assert report.calibration.low_risk_below == 0.0
    assert "no low-risk bin (" in triage_line(report) and "19 needed for a false-negative rate <= 0.05" in triage_line(report)


def test_exam_flags_count_an_exam_once_whatever_slice_or_type_flags_it() -> None:
    report = calibration_report(_patients(40, 8, 2.0), _patients(30, 9, 2.0), True, 0.1, 0.1, [0.5] * 5)
    gate = _patients(30, 9, 2.0)
    flagged = np.array([(1 / (1 + np.exp(-p.logits)) >= 0.5).any() for p in gate])
    bleeding = np.array([p.patient.labels.any() for p in gate])
    d = report.exam_decisions
    assert (d["true_positives"], d["positives"]) == (int((flagged & bleeding).sum()), int(bleeding.sum()))
    assert (d["true_negatives"], d["negatives"]) == (int((~flagged & ~bleeding).sum()), int((~bleeding).sum()))
    low, high = d["sensitivity_interval"]
    assert low <= d["sensitivity"] <= high
    never = calibration_report(_patients(40, 8, 2.0), gate, True, 0.1, 0.1, [1.0] * 5).exam_decisions
    assert never["true_positives"] == 0 and never["true_negatives"] == never["negatives"]


def test_every_exam_figure_is_reported_again_per_subgroup_and_the_groups_add_up() -> None:
    """Each subgroup's counts are those of its own exams (checked exam by exam against the report's
    arrays); a folder without a row is `unknown`; the markdown has a table row per subgroup."""
    gate = _patients(60, 7, 2.0)
    report = calibration_report(_patients(120, 6, 2.0), gate, True, 0.1, 0.1, [0.3] * 5)
    names = report.exam_names
    groups = {n: {"scanner": "GE" if i % 3 else "Siemens"} for i, n in enumerate(names) if i % 5}
    rows = subgroup_report(report, groups)
    assert [(r["column"], r["value"]) for r in rows] == [("scanner", "GE"), ("scanner", "Siemens"),
                                                         ("scanner", "unknown")]
    assert sum(r["exams"] for r in rows) == len(names)
    for row in rows:
        at = np.array([i for i, n in enumerate(names)
                       if groups.get(n, {}).get("scanner", "unknown") == row["value"]])
        bleeding, flagged = report.exam_labels[at, 0] == 1, report.exam_flagged[at]
        assert row["exams"] == len(at) and row["positives"] == bleeding.sum()
        assert row["true_positives"] == (flagged & bleeding).sum()
        assert row["true_negatives"] == (~flagged & ~bleeding).sum()
        assert row["triage"]["deferred"] == (report.exam_bins[at] == "defer").sum()
        assert row["triage"]["positives_low_risk"] == ((report.exam_bins[at] == "low_risk") & bleeding).sum()
        assert 0.0 <= row["ece_exam_calibrated"] <= 1.0
    lines = subgroup_lines(rows)
    assert len(lines) == 3 and lines[0].startswith(f"scanner GE: {rows[0]['exams']} gate exams, sensitivity ")
    markdown = triage_markdown(report, stored=True, subgroups=rows)
    assert "## By subgroup (gate exams)" in markdown
    assert sum(line.startswith("| scanner = ") for line in markdown.splitlines()) == 3
    assert "carries no subgroups" in triage_markdown(report, stored=True)
