"""The model spec with its calibration: a strict round trip, the earlier format still read."""

from __future__ import annotations

import json

import pytest

from hemo_model.model.spec import Calibration, ModelSpec, SpecError


def _calibration(**changes: object) -> Calibration:
    values: dict[str, object] = dict(
        mode="single", slice_temperatures=(1.5,) * 5, slice_shifts=(0.5,) * 5, exam_rule="max",
        exam_temperatures=(1.1,) * 6, exam_shifts=(0.2,) * 6, low_risk_below=0.0, high_risk_above=0.7,
        low_risk_target=0.05, high_risk_target=0.1, n_slices=120, n_exams=11, n_positive_exams=6,
        fitted_on_trained_patients=True)
    values.update(changes)
    return Calibration(**values)  # type: ignore[arg-type]


def test_a_calibrated_spec_survives_json() -> None:
    spec = ModelSpec(image_size=64, calibration=_calibration())
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_a_spec_of_the_first_format_reads_as_uncalibrated() -> None:
    raw = ModelSpec(image_size=64).to_dict()
    assert ModelSpec.from_dict(raw).calibration is None
    raw["calibration"] = None  # /1 never had the key: it is refused as unknown there
    with pytest.raises(SpecError, match="unknown key"):
        ModelSpec.from_dict(raw)


def test_an_uncalibrated_spec_is_written_in_the_format_an_older_release_reads() -> None:
    raw = ModelSpec(image_size=64).to_dict()
    assert raw["format"] == "hemo-model-spec/1" and "calibration" not in raw
    assert ModelSpec.from_dict(raw) == ModelSpec(image_size=64)


def test_the_current_format_must_say_calibration() -> None:
    raw = ModelSpec(image_size=64, calibration=_calibration()).to_dict()
    assert raw["format"] == "hemo-model-spec/2"
    del raw["calibration"]
    with pytest.raises(SpecError, match="missing key.*calibration"):
        ModelSpec.from_dict(raw)
    raw["calibration"] = [1, 2]
    with pytest.raises(SpecError, match="calibration must be a JSON object"):
        ModelSpec.from_dict(raw)


@pytest.mark.parametrize(("change", "message"), [
    ({"slice_temperatures": [1.0] * 4}, "slice_temperatures must be 5"),
    ({"exam_shifts": [0.0] * 5}, "exam_shifts must be 6"),
    ({"slice_temperatures": [1.0, 1.0, 0.0, 1.0, 1.0]}, "temperatures must be positive"),
    ({"mode": "filter"}, "mode 'filter'"),
    ({"low_risk_target": 0.0}, "targets must be in"),
    ({"n_positive_exams": 12}, "positive exams at most"),
    ({"fitted_on_trained_patients": 1}, "must be true or false"),
    ({"surprise": 1}, "unknown key"),
])
def test_a_calibration_out_of_range_is_refused_by_name(change: dict[str, object], message: str) -> None:
    raw = ModelSpec(image_size=64, calibration=_calibration()).to_dict()
    raw["calibration"].update(change)
    with pytest.raises(SpecError, match=message):
        ModelSpec.from_dict(raw)
