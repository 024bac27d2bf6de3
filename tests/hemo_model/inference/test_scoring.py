"""One forward pass per slice + 5-tap filter equals scoring each window separately."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hemo_model.data.patients import load_split
from hemo_model.inference.scoring import context_filter, score_sequences, score_windows_naive
from hemo_model.model.networks import HemoNet
from hemo_model.model.spec import CONTEXT_WEIGHTS


def test_filter_by_hand_with_edge_replication() -> None:
    logits = torch.tensor([[1.0], [2.0], [4.0]])
    out = context_filter(logits, CONTEXT_WEIGHTS).squeeze(1).tolist()
    # k=0 window [0,0,0,1,2] -> .1*1 + .3*1 + .5*1 + .3*2 + .1*4
    assert out[0] == pytest.approx(0.1 + 0.3 + 0.5 + 0.6 + 0.4)
    assert out[1] == pytest.approx(0.1 * 1 + 0.3 * 1 + 0.5 * 2 + 0.3 * 4 + 0.1 * 4)
    assert out[2] == pytest.approx(0.1 * 1 + 0.3 * 2 + 0.5 * 4 + 0.3 * 4 + 0.1 * 4)
    assert torch.equal(context_filter(logits, (1.0,)), logits)


@pytest.mark.parametrize("weights", [CONTEXT_WEIGHTS, (1.0,)])
def test_sequence_scoring_equals_naive_windows(tiny_data: Path, weights: tuple[float, ...]) -> None:
    torch.manual_seed(0)
    model = HemoNet().eval()
    patients = load_split(tiny_data, "train")[:2]
    device = torch.device("cpu")
    fast = np.concatenate([s.logits for s in score_sequences(model, patients, 32, weights, device)])
    naive = score_windows_naive(model, patients, 32, weights, device)
    assert fast.shape == naive.shape == (sum(len(p) for p in patients), 5)
    np.testing.assert_allclose(fast, naive, atol=1e-5, rtol=0)


def test_bf16_scores_close_to_fp32(tiny_data: Path) -> None:
    torch.manual_seed(0)
    model = HemoNet().eval()
    patients = load_split(tiny_data, "test")[:1]
    device = torch.device("cpu")
    fp32 = score_sequences(model, patients, 32, CONTEXT_WEIGHTS, device, "fp32")[0].probabilities
    bf16 = score_sequences(model, patients, 32, CONTEXT_WEIGHTS, device, "bf16")[0].probabilities
    assert np.abs(fp32 - bf16).max() < 0.05
    with pytest.raises(ValueError, match="precision"):
        score_sequences(model, patients, 32, CONTEXT_WEIGHTS, device, "fp16")
