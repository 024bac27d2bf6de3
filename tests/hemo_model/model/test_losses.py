"""AsymmetricLoss against values computed by hand from the method's formula, and BCE."""

from __future__ import annotations

import math

import pytest
import torch

from hemo_model.model.losses import AsymmetricLoss, build_loss


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_positive_term_by_hand() -> None:
    # p = sigmoid(0.5); L+ = (1 - p)^1 * log(p)
    p = sigmoid(0.5)
    expected = -((1 - p) * math.log(p))
    loss = AsymmetricLoss()(torch.tensor([[0.5]]), torch.tensor([[1.0]]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_negative_term_with_margin_by_hand() -> None:
    # p = sigmoid(1.0) = 0.7311; p_m = p - 0.05; L- = p_m^4 * log(1 - p_m)
    p = sigmoid(1.0)
    p_m = p - 0.05
    expected = -(p_m**4 * math.log(1 - p_m))
    loss = AsymmetricLoss()(torch.tensor([[1.0]]), torch.tensor([[0.0]]))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_easy_negative_below_margin_gives_zero_loss_and_zero_gradient() -> None:
    logits = torch.tensor([[-4.0]], requires_grad=True)  # p = 0.018 <= 0.05
    loss = AsymmetricLoss()(logits, torch.tensor([[0.0]]))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and logits.grad.item() == 0.0


def test_sum_and_mean_reductions_on_a_batch() -> None:
    logits = torch.tensor([[0.5, 1.0, -4.0], [2.0, -1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    by_hand = 0.0
    for x, y in zip(logits.flatten().tolist(), targets.flatten().tolist()):
        p = sigmoid(x)
        if y == 1:
            by_hand += -((1 - p) ** 1 * math.log(max(p, 1e-8)))
        else:
            p_m = max(p - 0.05, 0.0)
            by_hand += -(p_m**4 * math.log(max(1 - p_m, 1e-8)))
    assert AsymmetricLoss(reduction="sum")(logits, targets).item() == pytest.approx(by_hand, rel=1e-6)
    assert AsymmetricLoss(reduction="mean")(logits, targets).item() == pytest.approx(by_hand / 6, rel=1e-6)


def test_gamma_zero_no_clip_equals_bce() -> None:
    torch.manual_seed(0)
    logits, targets = torch.randn(8, 5), (torch.rand(8, 5) > 0.7).float()
    asl = AsymmetricLoss(gamma_neg=0, gamma_pos=0, clip=0.0, reduction="mean")(logits, targets)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert asl.item() == pytest.approx(bce.item(), rel=1e-5)


def test_log_is_clamped_at_eps() -> None:
    loss = AsymmetricLoss(gamma_pos=0)(torch.tensor([[-200.0]]), torch.tensor([[1.0]]))
    assert loss.item() == pytest.approx(-math.log(1e-8), rel=1e-6)


def test_asl_down_weights_easy_negatives_relative_to_bce() -> None:
    logits = torch.tensor([[-1.0]])  # p = 0.27, a fairly easy negative
    target = torch.tensor([[0.0]])
    assert AsymmetricLoss()(logits, target) < 0.05 * build_loss("bce")(logits, target)


def test_build_loss_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("focal")
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricLoss(reduction="none")
