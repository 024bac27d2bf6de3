"""Learned context heads: exact BiGRU, start equal to single slices, export with any sequence
length, learn what a fixed filter cannot, and score like the per-slice path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hemo_model.data.patients import load_split
from hemo_model.inference.scoring import score_sequence_model, score_sequences
from hemo_model.metrics.classification import micro_f2
from hemo_model.model.context import EMBEDDING, ConvContext, GRUContext, SequenceModel, build_context_head
from hemo_model.model.losses import AsymmetricLoss
from hemo_model.model.networks import HemoNet
from hemo_model.training.config import FitConfig
from hemo_model.training.context_head import Embedded, fit_context_head, head_scores


def test_gru_head_equals_a_bidirectional_gru() -> None:
    torch.manual_seed(0)
    head = GRUContext(dim=12, hidden=6)
    reference = nn.GRU(6, 6, batch_first=True, bidirectional=True)
    for suffix, gru in (("", head.forward_gru), ("_reverse", head.backward_gru)):
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(reference, name + suffix).data.copy_(getattr(gru, name))
    x = torch.randn(29, 12)
    h = torch.relu(head.reduce(x))
    both = torch.cat([head._run(head.forward_gru, h), head._run(head.backward_gru, h.flip(0)).flip(0)], dim=1)
    assert torch.allclose(both, reference(h.unsqueeze(0))[0][0], atol=1e-6)


@pytest.mark.parametrize("kind", ["conv1d", "bigru"])
def test_untrained_head_scores_like_single_slices_and_exports_for_any_length(kind: str) -> None:
    torch.manual_seed(1)
    model = SequenceModel(HemoNet(head="linear"), build_context_head(kind)).eval()
    x = torch.randn(7, 3, 32, 32)
    out = model(x)
    assert out.shape == (7, 10) and torch.allclose(out[:, :5], out[:, 5:])
    nn.init.normal_(model.context.out.weight, std=0.1)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    longer = torch.randn(31, 3, 32, 32)
    assert torch.allclose(program.module()(longer), model(longer), atol=1e-5)


def _toy(n_patients: int, seed: int) -> list[Embedded]:
    """A slice is positive when its *neighbour* carries a marker feature: invisible to the slice
    itself (its own logits are 0), visible to a head that looks along the sequence."""
    rng = np.random.default_rng(seed)
    items = []
    for _ in range(n_patients):
        n = int(rng.integers(20, 30))
        marker = rng.random(n) < 0.2
        features = torch.randn(n, EMBEDDING) * 0.1
        features[:, 0] += torch.from_numpy(marker.astype(np.float32)) * 3
        labels = np.zeros((n, 5), dtype=np.float32)
        labels[1:, 0] = marker[:-1]  # positive one slice after the marker
        items.append(Embedded(features, torch.zeros(n, 5), torch.from_numpy(labels)))
    return items


@pytest.mark.parametrize("kind", ["conv1d", "bigru"])
def test_head_learns_from_neighbouring_slices(kind: str) -> None:
    train, val = _toy(40, 0), _toy(10, 1)
    labels = np.concatenate([v.labels.numpy() for v in val])

    def validate(head: nn.Module) -> float:
        return micro_f2(labels[:, :1], 1 / (1 + np.exp(-head_scores(head, val)[0][:, :1])))

    torch.manual_seed(0)
    head = build_context_head(kind)
    before = validate(head)
    config = FitConfig(epochs=8, batch_size=None, lr=3e-3, step_size=8, gamma=1.0, seed=0, selection="best")
    result = fit_context_head(head, train, validate, AsymmetricLoss(), config)
    history, chosen = result.history, result.best_epoch
    assert chosen == max(history, key=lambda h: (h.val_micro_f2, -h.epoch)).epoch
    assert validate(head) == pytest.approx(history[chosen - 1].val_micro_f2)
    assert validate(head) > before + 0.4, (before, [h.val_micro_f2 for h in history])


def test_sequence_scoring_keeps_per_slice_logits(tiny_data: Path) -> None:
    torch.manual_seed(2)
    patients = load_split(tiny_data, "train")[:2]
    slice_model = HemoNet(head="linear").eval()
    model = SequenceModel(slice_model, ConvContext()).eval()
    nn.init.normal_(model.context.out.weight, std=0.5)
    device = torch.device("cpu")
    learned = score_sequence_model(model, patients, 32, device)
    plain = score_sequences(slice_model, patients, 32, (1.0,), device)
    for a, b in zip(learned, plain):
        assert np.allclose(a.slice_logits, b.slice_logits, atol=1e-5)
        assert not np.allclose(a.logits, a.slice_logits)  # the head changed the context scores
        assert np.array_equal(a.single().logits, a.slice_logits)
