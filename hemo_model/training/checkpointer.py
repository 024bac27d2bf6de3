"""The checkpoints of a fit: ``last.pt`` (everything needed to continue) and ``best.pt`` (the
selected epoch's weights), both written atomically with the model spec and the caller's extra
state (e.g. the training patients' provenance, the resume fingerprint).

A retried fit continues from ``last.pt``: model, optimizer, scheduler, RNG states and history. The
caller reads ``last.pt`` once (:func:`read_last`, e.g. to decide whether it may be continued) and
hands that payload to :meth:`Checkpointer.restore`, so the decision and the resume see the same
bytes. Per-epoch seeding (seed + epoch) makes a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import random
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hemo_model.model.spec import ModelSpec
from hemo_model.model.storage import save_checkpoint
from hemo_model.training.history import EpochRecord, FitResult

LAST = "last.pt"
BEST = "best.pt"


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def read_last(folder: Path) -> dict[str, Any] | None:
    """The payload of ``folder/last.pt`` (weights only: no code runs), or None when there is none.
    Errors of a foreign or corrupt file propagate: the caller decides what they mean."""
    path = folder / LAST
    if not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict):
        raise ValueError(f"{path} does not hold a checkpoint dictionary")
    return payload


class Checkpointer:
    """Writes ``best.pt`` and ``last.pt`` of ``save_model`` into ``folder``."""

    def __init__(self, folder: Path, spec: ModelSpec, extra: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.spec = spec
        self.extra = dict(extra or {})

    def save_best(self, model: nn.Module, epoch: int, val_micro_f2: float) -> None:
        save_checkpoint(self.folder / BEST, model, self.spec, epoch=epoch, val_micro_f2=val_micro_f2, **self.extra)

    def save_last(self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, epoch: int,
                  result: FitResult) -> None:
        save_checkpoint(
            self.folder / LAST, model, self.spec,
            optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(), rng=rng_state(),
            epoch=epoch, best_epoch=result.best_epoch, best_val_micro_f2=result.best_val_micro_f2,
            history=[asdict(h) for h in result.history], **self.extra,
        )

    def restore(self, payload: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler: Any) -> tuple[int, FitResult]:
        """Apply a ``last.pt`` payload: the model, optimizer, scheduler and RNG states as they were
        after its epoch; returns the next epoch and the result so far (with best.pt's weights)."""
        model.load_state_dict(payload["model_state"])
        optimizer.load_state_dict(payload["optimizer_state"])
        scheduler.load_state_dict(payload["scheduler_state"])
        set_rng_state(payload["rng"])
        result = FitResult(best_epoch=int(payload["best_epoch"]), best_val_micro_f2=float(payload["best_val_micro_f2"]),
                           history=[EpochRecord(**h) for h in payload["history"]])
        best = self.folder / BEST
        if best.is_file():
            result.best_state = torch.load(best, map_location="cpu", weights_only=True)["model_state"]
        return int(payload["epoch"]) + 1, result

    @staticmethod
    def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
        """A CPU copy of the model's weights (the selected epoch's, kept in memory)."""
        return copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
