"""Repeat-factor sampling: the factors follow LVIS's rule, an epoch keeps its length, rare classes
are drawn more often, and the order is reproducible per epoch and shared by torchrun ranks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hemo_model.training.sampling import RepeatFactorSampler, expected_share, repeat_factors


def _labels(rows: list[list[int]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32)


def test_factors_repeat_only_classes_rarer_than_the_threshold() -> None:
    # class 0 on 5 of 10 slices (0.5), class 1 on 1 of 10 (0.1), class 2 on none
    labels = _labels([[1, 0, 0]] * 4 + [[1, 1, 0]] + [[0, 0, 0]] * 5)
    factors = repeat_factors(labels, threshold=0.4)
    assert factors[0] == 1.0  # class 0 is more frequent than t: not repeated
    assert factors[4] == pytest.approx(math.sqrt(0.4 / 0.1))  # the slice with the rare class: its factor
    assert (factors[5:] == 1.0).all()  # no positive: once
    assert repeat_factors(labels, threshold=0.05)[4] == 1.0  # t below every frequency: uniform


def test_a_slice_takes_the_largest_factor_of_its_classes_and_nan_counts_as_negative() -> None:
    labels = _labels([[1, 0], [1, 1], [0, 0], [0, 0]] * 5)  # class 0: 0.5, class 1: 0.25
    labels = np.vstack([labels, [[np.nan, np.nan]]])
    factors = repeat_factors(labels, threshold=1.0)
    f0, f1 = math.sqrt(1.0 / (10 / 21)), math.sqrt(1.0 / (5 / 21))
    assert factors[0] == pytest.approx(f0) and factors[1] == pytest.approx(max(f0, f1))
    assert factors[-1] == 1.0


@pytest.mark.parametrize("threshold", [0.0, -0.1])
def test_a_threshold_that_is_not_positive_is_refused(threshold: float) -> None:
    with pytest.raises(ValueError, match="above 0"):
        repeat_factors(_labels([[1, 0]]), threshold)


def test_an_epoch_has_the_datasets_length_and_repeats_rare_slices() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 2)) < [0.3, 0.03]).astype(np.float32)
    factors = repeat_factors(labels, threshold=0.2)
    sampler = RepeatFactorSampler(factors, seed=1)
    drawn = []
    for epoch in range(50):
        sampler.set_epoch(epoch)
        order = list(sampler)
        assert len(order) == len(sampler) == 400 and all(0 <= i < 400 for i in order)
        drawn.extend(order)
    share = labels[drawn].mean(axis=0)
    assert share[1] > 2.0 * labels[:, 1].mean()  # sqrt(0.2 / 0.03) = 2.6 times as often
    assert share[1] == pytest.approx(expected_share(factors, labels)[1], rel=0.1)


def test_the_order_is_the_same_for_an_epoch_and_changes_between_epochs() -> None:
    factors = repeat_factors((np.random.default_rng(2).random((60, 3)) < 0.1).astype(np.float32), 0.3)
    first, second = RepeatFactorSampler(factors, seed=7), RepeatFactorSampler(factors, seed=7)
    first.set_epoch(3)
    second.set_epoch(3)
    assert list(first) == list(second)
    second.set_epoch(4)
    assert list(first) != list(second)


def test_ranks_share_one_global_order_that_a_single_process_also_draws() -> None:
    """Two ranks together draw the single process's order (all but its last item), interleaved as
    DistributedSampler does: what makes two-process gradients equal one process's."""
    factors = repeat_factors((np.random.default_rng(3).random((61, 2)) < 0.05).astype(np.float32), 0.5)
    single = RepeatFactorSampler(factors, seed=0)
    ranks = [RepeatFactorSampler(factors, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    for sampler in [single, *ranks]:
        sampler.set_epoch(5)
    order = list(single)
    assert len(order) == 61 and len(single) == 61
    assert [len(list(r)) for r in ranks] == [30, 30] == [len(r) for r in ranks]  # 61 items: every rank 30 steps
    interleaved = [i for pair in zip(list(ranks[0]), list(ranks[1]), strict=True) for i in pair]
    assert interleaved == order[:60]


def test_factors_below_one_and_a_rank_outside_the_group_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 1"):
        RepeatFactorSampler(np.array([1.0, 0.5]))
    with pytest.raises(ValueError, match="finite"):
        RepeatFactorSampler(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="finite"):
        repeat_factors(np.zeros((3, 2)), float("inf"))
    with pytest.raises(ValueError, match="rank 2"):
        RepeatFactorSampler(np.array([1.0, 2.0]), num_replicas=2, rank=2)
