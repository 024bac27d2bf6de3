"""The epoch history and the rule that picks which epoch moves on.

``best`` (the method: highest validation micro-F2), ``last``, or ``ema`` (highest exponential
moving average of validation micro-F2, which a single lucky epoch on a small validation set cannot
win).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class EpochRecord:
    """One finished epoch, as logged and as kept in last.pt."""

    epoch: int
    train_loss: float
    val_micro_f2: float
    lr: float
    seconds: float
    samples_per_s: float


@dataclass
class EpochStats:
    """What one pass over the training data measured (summed over ranks under torchrun)."""

    loss_sum: float
    steps: int
    seen: int
    seconds: float

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / max(self.steps, 1)

    @property
    def samples_per_s(self) -> float:
        return self.seen / max(self.seconds, 1e-9)


@dataclass
class FitResult:
    best_epoch: int
    best_val_micro_f2: float
    history: list[EpochRecord] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None
    initial_val_micro_f2: float | None = None
    """Validation micro-F2 of the starting weights, when the fit was asked to measure it."""


SELECTION_RULES = ("best", "last", "ema")


def selected_epoch(history: list[EpochRecord], rule: str, ema_alpha: float = 0.5) -> int:
    """The epoch ``rule`` keeps, from the history so far. Online: a later epoch can only replace
    the choice, never revive an earlier one, so best.pt can be written as training goes."""
    if not history:
        raise ValueError("no epoch to select from")
    if rule == "last":
        return history[-1].epoch
    if rule == "best":
        values = [h.val_micro_f2 for h in history]
    elif rule == "ema":
        values, smoothed = [], None
        for h in history:
            smoothed = h.val_micro_f2 if smoothed is None else ema_alpha * h.val_micro_f2 + (1 - ema_alpha) * smoothed
            values.append(smoothed)
    else:
        raise ValueError(f"unknown selection rule {rule!r}; use one of {SELECTION_RULES}")
    return history[values.index(max(values))].epoch  # the first epoch reaching the maximum
