"""The promotion rule on its own: per-patient confusion counts in, a decision and its reasons out."""

from __future__ import annotations

import numpy as np
import pytest

from hemo_model.metrics.bootstrap import f2_from_counts, micro_counts, patient_counts
from hemo_pipeline.services.settings import GateSettings
from hemo_pipeline.steps.gate import judge

GATE = GateSettings(bootstrap=1000, min_margin_over_trivial=0.1, min_improvement=0.005, max_class_drop=0.05,
                    min_class_f2=0.1)


@pytest.fixture(scope="module")
def labels() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.random((30, 5)) < [0.12, 0.08, 0.12, 0.17, 0.06]).astype(int) for _ in range(40)]


def _flip(labels: list[np.ndarray], rate: float, seed: int, classes: slice = slice(None)) -> list[np.ndarray]:
    """Predictions that are the labels with a fraction ``rate`` of the cells flipped."""
    rng = np.random.default_rng(seed)
    out = []
    for y in labels:
        pred = y.copy()
        noise = rng.random(y.shape) < rate
        pred[:, classes] = np.where(noise[:, classes], 1 - y[:, classes], y[:, classes])
        out.append(pred)
    return out


def _counts(labels: list[np.ndarray], predictions: list[np.ndarray]) -> np.ndarray:
    return patient_counts(labels, predictions)


def _trivial(labels: list[np.ndarray]) -> np.ndarray:
    return _counts(labels, [np.ones_like(y) for y in labels])


def test_all_positive_first_model_is_rejected(labels: list[np.ndarray]) -> None:
    j = judge(_trivial(labels), None, _trivial(labels), GATE)
    assert not j.promote and "beats_all_positive" in j.reason
    assert j.challenger.micro_f2 == pytest.approx(j.trivial_micro_f2)


def test_random_guessing_first_model_is_rejected(labels: list[np.ndarray]) -> None:
    rng = np.random.default_rng(1)
    guesses = [(rng.random(y.shape) < 0.5).astype(int) for y in labels]
    j = judge(_counts(labels, guesses), None, _trivial(labels), GATE)
    assert not j.promote and not j.rules[0].passed


def test_good_first_model_is_promoted_on_margin_and_floors_only(labels: list[np.ndarray]) -> None:
    j = judge(_counts(labels, _flip(labels, 0.05, 2)), None, _trivial(labels), GATE)
    assert j.promote and [r.name for r in j.rules] == ["beats_all_positive", "class_floor"]
    assert j.gain is None and j.champion is None


def test_identical_models_are_not_promoted(labels: list[np.ndarray]) -> None:
    same = _counts(labels, _flip(labels, 0.05, 3))
    j = judge(same, same.copy(), _trivial(labels), GATE)
    assert not j.promote
    assert j.gain == 0.0 and j.gain_interval == (0.0, 0.0)
    assert {r.name for r in j.rules if not r.passed} == {"gain_interval_above_zero", "min_improvement"}


def test_noise_sized_gain_is_not_promoted(labels: list[np.ndarray]) -> None:
    """Two models of the same quality (different noise): whichever is better on these patients,
    the gain interval contains 0."""
    a, b = _counts(labels, _flip(labels, 0.08, 4)), _counts(labels, _flip(labels, 0.08, 5))
    j = judge(a, b, _trivial(labels), GATE)
    assert j.gain_interval[0] <= 0.0 <= j.gain_interval[1] and not j.promote


def test_clearly_better_challenger_is_promoted(labels: list[np.ndarray]) -> None:
    better, worse = _counts(labels, _flip(labels, 0.02, 6)), _counts(labels, _flip(labels, 0.15, 7))
    j = judge(better, worse, _trivial(labels), GATE)
    assert j.promote, j.reason
    assert j.gain > 0.05 and j.gain_interval[0] > 0 and all(r.passed for r in j.rules)
    assert j.challenger.micro_f2 > j.champion.micro_f2


def test_micro_win_that_collapses_a_class_is_rejected(labels: list[np.ndarray]) -> None:
    champion = _flip(labels, 0.15, 8)
    challenger = _flip(labels, 0.01, 9)
    for y in challenger:
        y[:, 4] = 0  # EDH never flagged again
    j = judge(_counts(labels, challenger), _counts(labels, champion), _trivial(labels), GATE)
    assert j.gain > 0 and j.gain_interval[0] > 0  # better overall ...
    assert not j.promote  # ... but not at the price of a class
    failed = {r.name: r.detail for r in j.rules if not r.passed}
    assert set(failed) == {"class_drop", "class_floor"} and "edh" in failed["class_drop"]


def test_class_floor_applies_to_a_first_model(labels: list[np.ndarray]) -> None:
    challenger = _flip(labels, 0.01, 10)
    for y in challenger:
        y[:, 1] = 0
    j = judge(_counts(labels, challenger), None, _trivial(labels), GATE)
    assert not j.promote and [r.name for r in j.rules if not r.passed] == ["class_floor"]


def test_bootstrap_is_seeded_and_paired(labels: list[np.ndarray]) -> None:
    a, b = _counts(labels, _flip(labels, 0.05, 11)), _counts(labels, _flip(labels, 0.1, 12))
    first, again = judge(a, b, _trivial(labels), GATE), judge(a, b, _trivial(labels), GATE)
    assert first.gain_interval == again.gain_interval
    point = float(f2_from_counts(micro_counts(a.sum(0))) - f2_from_counts(micro_counts(b.sum(0))))
    assert first.gain == pytest.approx(point, abs=0.01)
    other_seed = judge(a, b, _trivial(labels), GateSettings(bootstrap=1000, seed=1))
    assert other_seed.gain_interval != first.gain_interval


def test_counts_match_sklearn(labels: list[np.ndarray]) -> None:
    from hemo_model.metrics.classification import micro_f2

    predictions = _flip(labels, 0.1, 13)
    counts = _counts(labels, predictions)
    assert float(f2_from_counts(micro_counts(counts.sum(0)))) == pytest.approx(
        micro_f2(np.concatenate(labels), np.concatenate(predictions).astype(float)))


def test_class_intervals_skip_resamples_without_the_class() -> None:
    """A class whose positives sit in one patient of 20: most resamples miss that patient. Its
    recall interval comes from the resamples that have it (all found: [1, 1]), not from zeros."""
    labels = [np.zeros((30, 5), dtype=int) for _ in range(20)]
    for y in labels:
        y[:10, 3] = 1  # sdh everywhere
    labels[0][5:15, 0] = 1  # ich in patient 0 only
    predictions = [y.copy() for y in labels]
    judgement = judge(_counts(labels, predictions), None, _trivial(labels), GATE)
    ich = judgement.challenger.per_class["ich"]
    assert ich["recall"] == ich["recall_low"] == ich["recall_high"] == 1.0
    assert ich["f2_low"] == 1.0 and ich["precision_low"] == 1.0
    edh = judgement.challenger.per_class["edh"]  # no positives, none predicted: undefined everywhere
    assert edh["positives"] == 0 and edh["recall_low"] == edh["recall"] == 0.0
