"""Training a learned context head on frozen per-slice embeddings.

Training is cheap: the stage-1 network is frozen, every slice is embedded once, and the head is
fitted on those embeddings (the winners trained their sequence models on cached CNN features),
one sequence per step, by the same epoch loop as the networks (:mod:`hemo_model.training.loop`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn

from hemo_model.model.context import EMBEDDING, SliceNetwork
from hemo_model.training.config import FitConfig
from hemo_model.training.history import EpochRecord, FitResult
from hemo_model.training.loop import fit, tensor_input


@dataclass
class Embedded:
    """One patient's frozen per-slice embeddings and logits (and labels, if known)."""

    features: torch.Tensor
    logits: torch.Tensor
    labels: torch.Tensor | None


@torch.no_grad()
def embed(slice_model: nn.Module, patients: Sequence, image_size: int, device: torch.device,
          precision: str = "fp32", batch_size: int = 64, workers: int = 0, channels: int = 1) -> list[Embedded]:
    """Embed every slice once with the (frozen, eval-mode) per-slice model, grouped by patient."""
    from hemo_model.data.datasets import SliceDataset
    from hemo_model.data.transforms import to_model_input
    from hemo_model.inference.precision import autocast

    network = cast(SliceNetwork, slice_model.to(device).eval())
    loader = torch.utils.data.DataLoader(SliceDataset(patients, image_size, channels=channels), batch_size=batch_size,
                                         num_workers=workers)
    features, logits = [], []
    for images, _ in loader:
        images = to_model_input(images, device)
        with autocast(device, precision):
            f = network.features(images)
            z = network.classify(f)
        features.append(f.float().cpu())
        logits.append(z.float().cpu())
    all_features, all_logits = torch.cat(features), torch.cat(logits)
    out, start = [], 0
    for p in patients:
        n = len(p)
        labels = torch.from_numpy(p.labels) if p.labels is not None else None
        out.append(Embedded(all_features[start:start + n], all_logits[start:start + n], labels))
        start += n
    return out


class _Sequences(torch.utils.data.Dataset):
    """One item per patient: its embeddings and logits side by side ``(S, 512 + 5)``, and labels."""

    def __init__(self, embedded: list[Embedded]) -> None:
        self.items = [(torch.cat([e.features, e.logits], dim=1), _labelled(e)) for e in embedded]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.items[index]


def _labelled(item: Embedded) -> torch.Tensor:
    if item.labels is None:
        raise ValueError("a context head trains on labelled sequences only")
    return item.labels


class _OnSequence(nn.Module):
    """A context head fed one packed sequence: splits it back into embeddings and logits."""

    def __init__(self, head: nn.Module) -> None:
        super().__init__()
        self.head = head

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.head(packed[:, :EMBEDDING], packed[:, EMBEDDING:])


def fit_context_head(head: nn.Module, train: list[Embedded], validate: Callable[[nn.Module], float],
                     loss_fn: nn.Module, config: FitConfig,
                     on_epoch: Callable[[EpochRecord], None] | None = None) -> FitResult:
    """Fit ``head`` on frozen embeddings with the networks' epoch loop (:func:`fit`), one whole
    sequence per step (``config.batch_size`` None), nothing checkpointed; ``validate(head)``
    scores it. The head is left holding the selected epoch's weights."""
    wrapped = _OnSequence(head)
    result = fit(wrapped, _Sequences(train), lambda _: validate(head), loss_fn, config, on_epoch=on_epoch,
                 progress=False, prepare=tensor_input, save_model=head)
    if result.best_state is not None:
        head.load_state_dict(result.best_state)
    return result


def head_scores(head: nn.Module, embedded: list[Embedded]) -> tuple[np.ndarray, np.ndarray]:
    """(context logits, per-slice logits), each (N, 5) over all slices in order."""
    head.eval()
    with torch.no_grad():
        context = [head(e.features, e.logits) for e in embedded]
    return torch.cat(context).numpy(), torch.cat([e.logits for e in embedded]).numpy()
