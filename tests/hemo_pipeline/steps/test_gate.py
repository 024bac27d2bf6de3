"""The gate step's own logic around hemo_model.metrics.gate_statistics (whose kernels and decisions
are tested in tests/hemo_model/metrics/test_gate_statistics.py): settings to policy, the minimum
gate, the per-model summaries and the report. Registry paths: test_promotion.py."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hemo_model import CLASSES
from hemo_model.metrics import gate_statistics as gs
from hemo_model.metrics.bootstrap import patient_counts
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.settings import GateSettings
from hemo_pipeline.steps.gate import policy_of, require_gate_size, summarise

RENAMED = {"min_margin_over_trivial": "margin_over_trivial"}


@pytest.fixture(scope="module")
def labels() -> list[np.ndarray]:
    """60 patients of 30 slices; each class on about a third of them (enough for the default gate)."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(60):
        bleeding = rng.random(5) < 0.35
        out.append(((rng.random((30, 5)) < 0.3) & bleeding).astype(int))
    return out


def _trivial(labels: list[np.ndarray]) -> np.ndarray:
    return patient_counts(labels, [np.ones_like(y) for y in labels])


def test_settings_defaults_are_the_policy_defaults() -> None:
    """params.yaml's documented defaults and the statistics module's calibrated ones are one set."""
    assert policy_of(GateSettings()) == gs.GatePolicy()


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(GateSettings)])
def test_every_gate_setting_reaches_the_policy(name: str) -> None:
    default = getattr(GateSettings(), name)
    changed: object
    if isinstance(default, bool):
        changed = not default
    elif isinstance(default, str):
        changed = "noninferiority"
    else:
        changed = default + 7 if isinstance(default, int) else default / 2 + 0.001
    policy = policy_of(dataclasses.replace(GateSettings(), **{name: changed}))
    assert getattr(policy, RENAMED.get(name, name)) == changed


def test_a_small_gate_refuses_with_one_line_naming_what_is_short(labels: list[np.ndarray]) -> None:
    trivial = _trivial(labels)
    require_gate_size(trivial, gs.GatePolicy(), "7")  # 60 patients, >= 3 per class: judged
    no_edh = [y * np.array([1, 1, 1, 1, 0]) for y in labels]
    with pytest.raises(UserError) as refused:
        require_gate_size(_trivial(no_edh[:12]), gs.GatePolicy(), "7")
    message = str(refused.value)
    assert "\n" not in message and "12 patients (gate.min_patients 50)" in message
    assert "edh 0" in message and "hemo promote --version 7" in message
    first12 = _trivial(labels[:12])
    assert (gs.positive_patients(first12) >= 1).all()  # the demo profile's waiver: judged
    require_gate_size(first12, gs.GatePolicy(min_patients=10, min_positive_patients=1), "7")


def test_summary_intervals_hold_the_point_and_skip_undefined_classes(labels: list[np.ndarray]) -> None:
    rng = np.random.default_rng(1)
    predictions = [np.where(rng.random(y.shape) < 0.1, 1 - y, y) for y in labels]
    predictions = [p * np.array([1, 1, 1, 1, 0]) for p in predictions]  # EDH never flagged
    summary = summarise(patient_counts(labels, predictions), gs.GatePolicy(bootstrap=300))
    low, high = summary["micro_f2_interval"]
    assert low <= summary["micro_f2"] <= high and high - low > 0.01
    for cls in CLASSES[:4]:
        entry = summary["per_class"][cls]
        assert entry["f2_low"] <= entry["f2"] <= entry["f2_high"]
    assert summary["per_class"]["edh"]["f2"] == 0.0 and summary["per_class"]["edh"]["recall"] == 0.0
