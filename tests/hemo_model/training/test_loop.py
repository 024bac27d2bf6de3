"""The fit loop: learns, is deterministic on the CPU, checkpoints and resumes exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hemo_model.data.datasets import SliceDataset
from hemo_model.data.patients import load_split
from hemo_model.model.losses import AsymmetricLoss
from hemo_model.model.networks import HemoNet
from hemo_model.model.spec import ModelSpec
from hemo_model.model.storage import load_checkpoint
from hemo_model.training.checkpointer import BEST, LAST, Checkpointer, read_last
from hemo_model.training.config import FitConfig
from hemo_model.training.loop import fit
from hemo_model.training.sampling import expected_share, repeat_factors

SIZE = 32


@pytest.fixture(scope="module")
def dataset(tiny_data: Path) -> SliceDataset:
    patients = load_split(tiny_data, "train")[:2]
    return SliceDataset(patients, SIZE, cache=True)


def _train(dataset: SliceDataset, out: Path, epochs: int, resume: bool = False, max_steps: int | None = 3,
           sampling: str = "uniform"):
    torch.manual_seed(0)
    model = HemoNet()
    config = FitConfig(epochs=epochs, batch_size=8, lr=1e-3, seed=5, max_steps=max_steps, sampling=sampling,
                       repeat_threshold=0.5)
    val_scores = iter([0.2, 0.5, 0.4, 0.45])
    result = fit(model, dataset, lambda m: next(val_scores), AsymmetricLoss(), config,
                 Checkpointer(out, ModelSpec(image_size=SIZE)), resume_from=read_last(out) if resume else None,
                 progress=False)
    return model, result


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_deterministic_for_a_seed(dataset: SliceDataset, tmp_path: Path) -> None:
    first, _ = _train(dataset, tmp_path / "a", epochs=1)
    second, _ = _train(dataset, tmp_path / "b", epochs=1)
    assert _same_weights(first, second)


def test_training_changes_weights_and_zero_steps_does_not(dataset: SliceDataset, tmp_path: Path) -> None:
    torch.manual_seed(0)
    untouched = HemoNet()
    trained, result = _train(dataset, tmp_path / "a", epochs=1)
    assert not _same_weights(trained, untouched)
    assert result.history[0].train_loss > 0
    zero, _ = _train(dataset, tmp_path / "z", epochs=1, max_steps=0)
    head_before = untouched.head[4].weight
    assert torch.equal(zero.head[4].weight, head_before)


def test_keeps_best_epoch_and_checkpoints(dataset: SliceDataset, tmp_path: Path) -> None:
    _, result = _train(dataset, tmp_path, epochs=3)  # validation scores 0.2, 0.5, 0.4 -> epoch 2 is best
    assert result.best_epoch == 2 and result.best_val_micro_f2 == 0.5
    assert [h.epoch for h in result.history] == [1, 2, 3]
    best, config, payload = load_checkpoint(tmp_path / BEST)
    assert payload["epoch"] == 2 and config.image_size == SIZE
    assert torch.load(tmp_path / LAST, weights_only=True)["epoch"] == 3


@pytest.mark.parametrize("sampling", ["uniform", "repeat_factor"])
def test_resume_equals_uninterrupted(dataset: SliceDataset, tmp_path: Path, sampling: str) -> None:
    straight, straight_result = _train(dataset, tmp_path / "straight", epochs=2, sampling=sampling)
    _train(dataset, tmp_path / "resumed", epochs=1, sampling=sampling)  # "interrupted" after epoch 1
    resumed, resumed_result = _train(dataset, tmp_path / "resumed", epochs=2, resume=True, sampling=sampling)
    assert _same_weights(straight, resumed)
    assert [h.epoch for h in resumed_result.history] == [1, 2]
    assert resumed_result.history[1].train_loss == pytest.approx(straight_result.history[1].train_loss)


def test_repeat_factor_sampling_trains_on_another_mix(dataset: SliceDataset, tmp_path: Path) -> None:
    labels = dataset.item_labels()
    factors = repeat_factors(labels, 0.5)  # the threshold _train uses
    frequency = np.nan_to_num(labels).mean(axis=0)
    rarest = int(np.argmin(np.where(frequency > 0, frequency, np.inf)))
    # This data has a class the rule lifts: the mix of draws changes, not only their order.
    assert expected_share(factors, labels)[rarest] > frequency[rarest]
    uniform, _ = _train(dataset, tmp_path / "u", epochs=1)
    repeated, _ = _train(dataset, tmp_path / "r", epochs=1, sampling="repeat_factor")
    assert not _same_weights(uniform, repeated)


def test_an_unknown_sampling_rule_is_refused(dataset: SliceDataset, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown sampling 'balanced'"):
        _train(dataset, tmp_path, epochs=1, sampling="balanced")
