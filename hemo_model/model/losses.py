"""Asymmetric Loss (Ridnik et al., ICCV 2021) for imbalanced multi-label targets, and BCE.

With p = sigmoid(logit), margin m (``clip``) and focusing exponents gamma+ / gamma-:

* positive target: L+ = (1 - p)^gamma+ * log(p)
* negative target: p_m = max(p - m, 0) = 1 - min(1 - p + m, 1);  L- = p_m^gamma- * log(1 - p_m)
* loss = -(L+ + L-), summed (``reduction="sum"``, the original) or averaged over all
  batch x class cells (``"mean"``).

Logs are clamped at ``eps``. A negative with p <= m has p_m = 0: zero loss and zero gradient,
which is how ASL discards easy (and possibly mislabelled) negatives.
"""

from __future__ import annotations

import torch
from torch import nn


class AsymmetricLoss(nn.Module):
    def __init__(self, gamma_neg: float = 4.0, gamma_pos: float = 1.0, clip: float = 0.05, eps: float = 1e-8,
                 reduction: str = "sum") -> None:
        super().__init__()
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
        self.gamma_neg, self.gamma_pos, self.clip, self.eps, self.reduction = gamma_neg, gamma_pos, clip, eps, reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float()
        p = torch.sigmoid(logits)
        one_minus_p_m = (1.0 - p + self.clip).clamp(max=1.0) if self.clip > 0 else 1.0 - p
        p_m = 1.0 - one_minus_p_m
        loss_pos = targets * (1.0 - p).pow(self.gamma_pos) * torch.log(p.clamp(min=self.eps))
        loss_neg = (1.0 - targets) * p_m.pow(self.gamma_neg) * torch.log(one_minus_p_m.clamp(min=self.eps))
        loss = -(loss_pos + loss_neg)
        return loss.sum() if self.reduction == "sum" else loss.mean()


def build_loss(name: str, reduction: str = "sum", **asl: float) -> nn.Module:
    """``"asl"`` (the method) or ``"bce"`` (the baseline), same reduction for a fair comparison."""
    if name == "asl":
        return AsymmetricLoss(reduction=reduction, **asl)
    if name == "bce":
        return nn.BCEWithLogitsLoss(reduction=reduction)
    raise ValueError(f"unknown loss {name!r}; use 'asl' or 'bce'")
