"""Whether each role can do its job: counted per patient, judged against the settings."""

from __future__ import annotations

import numpy as np

from hemo_pipeline.services.role_capacity import RoleContents, role_lines, tunable_thresholds, val_can_choose
from hemo_pipeline.services.settings import EvaluateSettings, GateSettings, SelectionSettings


def _scan(slices: int, positive: dict[int, int]) -> np.ndarray:
    y = np.zeros((slices, 5))
    for cls, count in positive.items():
        y[:count, cls] = 1
    return y


def test_contents_count_patients_not_scans() -> None:
    contents = RoleContents.of([_scan(10, {0: 3}), _scan(10, {0: 2, 4: 1}), _scan(10, {})], ["P_a", "P_a", "P_b"])
    assert contents.patients == 2
    assert contents.positive_slices.tolist() == [5, 0, 0, 0, 1]
    assert contents.positive_patients.tolist() == [1, 0, 0, 0, 1]


def test_val_chooses_only_with_enough_patients_and_positives() -> None:
    selection = SelectionSettings(min_val_patients=3, min_val_positives=2)
    rich = RoleContents.of([_scan(5, {c: 1 for c in range(5)})] * 3, ["a", "b", "c"])
    assert val_can_choose(rich, selection)[0]
    one_person = RoleContents.of([_scan(5, {c: 1 for c in range(5)})] * 3, ["a", "a", "a"])  # 3 scans, 1 patient
    ok, why = val_can_choose(one_person, selection)
    assert not ok and "1 patients < 3" in why
    no_edh = RoleContents.of([_scan(5, {c: 1 for c in range(4)})] * 3, ["a", "b", "c"])
    ok, why = val_can_choose(no_edh, selection)
    assert not ok and "edh 0" in why


def test_lines_say_what_each_role_cannot_do() -> None:
    full = RoleContents.of([_scan(5, {c: 2 for c in range(5)})] * 60, [f"p{i}" for i in range(60)])
    no_edh = RoleContents.of([_scan(5, {c: 2 for c in range(4)})] * 4, [f"q{i}" for i in range(4)])
    lines = role_lines({"train": no_edh, "val": no_edh, "gate": no_edh}, SelectionSettings(), GateSettings())
    assert "no positive patient of edh, which cannot be learned" in lines[0]
    assert "cannot choose (4 patients < 30; positive slices below 20" in lines[1]
    assert ("cannot judge, too few: 4 patients (gate.min_patients 50); positive patients edh 0 "
            "(gate.min_positive_patients 3)") in lines[2]
    good = role_lines({"train": full, "val": full, "gate": full}, SelectionSettings(), GateSettings())
    assert good[0].endswith("every class has examples to learn from")
    assert "can choose the epoch and whether refinement is kept; every class has 20 positive slices from 10" in good[1]
    assert good[2].endswith("can judge promotions")
    refit = role_lines({"train": full, "val": full, "gate": full}, SelectionSettings(), GateSettings(), refit=True)
    assert "train too (train.refit_on_val)" in refit[1] and "can choose" not in refit[1]
    assert refit[0] == good[0] and refit[2] == good[2]


def test_thresholds_are_tunable_only_with_positive_slices_from_enough_patients() -> None:
    """Thirty positive ich slices of three patients tune nothing; sdh, positive in 12 patients, is tuned."""
    scans = [_scan(30, {0: 10, 3: 2}) for _ in range(3)] + [_scan(30, {3: 2}) for _ in range(9)]
    val = RoleContents.of(scans, [f"v{i}" for i in range(12)])
    assert val.positive_slices.tolist() == [30, 0, 0, 24, 0] and val.positive_patients.tolist() == [3, 0, 0, 12, 0]
    line = tunable_thresholds(val, EvaluateSettings())
    assert line.startswith("thresholds tuned for sdh, the others stay 0.5: fewer than 20 positive slices from 10")
    assert tunable_thresholds(val, EvaluateSettings(min_tune_patients=3)).startswith("thresholds tuned for ich, sdh")
    assert tunable_thresholds(val, EvaluateSettings(min_tune_patients=13)).startswith("thresholds tuned for no class")
    assert tunable_thresholds(val, EvaluateSettings(tune_thresholds=False)).startswith("thresholds stay 0.5")
    lines = role_lines({"train": val, "val": val, "gate": val}, SelectionSettings(), GateSettings())
    assert "positive patients ich 3, ivh 0, sah 0, sdh 12, edh 0" in lines[1] and lines[1].endswith(line)
