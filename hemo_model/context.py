"""Learned context over a whole slice sequence: the RSNA 2019 winners' approach, as an option.

The method combines neighbouring slices with a fixed 5-tap filter of logits. The alternative
learns how to combine them: a small head reads the per-slice embeddings of a patient's whole
sequence (a 1-D convolution along z, or a bidirectional GRU) and adds a correction to each
slice's logits. The correction's last layer starts at zero, so before training the sequence model
scores exactly like the per-slice model it wraps.

Training is cheap: the stage-1 network is frozen, every slice is embedded once, and the head is
fitted on those embeddings (the winners trained their sequence models on cached CNN features).
The registered model is one :class:`SequenceModel`: ``(S, 3, H, W)`` slices of one sequence in,
``(S, 10)`` out (per-slice logits, then context logits), so `--context 1` still works.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hemo_model import CLASSES
from hemo_model.training import EpochRecord

CONTEXTS = ("filter", "conv1d", "bigru")
EMBEDDING = 512  # ResNet34's pooled features
HIDDEN = 64
MAX_SLICES = 256
"""Longest sequence a learned context scores (validation allows 22-40 by default)."""


class ConvContext(nn.Module):
    """Residual 1-D convolution along the sequence (receptive field 9 slices), edges replicated."""

    def __init__(self, dim: int = EMBEDDING, hidden: int = HIDDEN, width: int = 5) -> None:
        super().__init__()
        self.reduce = nn.Conv1d(dim, hidden, 1)
        self.conv = nn.Conv1d(hidden, hidden, width, padding=width // 2, padding_mode="replicate")
        self.conv2 = nn.Conv1d(hidden, hidden, width, padding=width // 2, padding_mode="replicate")
        self.out = nn.Conv1d(hidden, len(CLASSES), 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.reduce(features.t().unsqueeze(0)))
        h = torch.relu(self.conv2(torch.relu(self.conv(h))))
        return logits + self.out(h)[0].t()


class GRUContext(nn.Module):
    """Residual bidirectional GRU along the sequence (every slice sees the whole scan).

    Written as two one-way GRUs over sequences padded at the end to ``MAX_SLICES``: a GRU's
    outputs never depend on what comes after, so padding at the end (of the sequence, and of the
    reversed sequence) is exact, equal to ``nn.GRU(bidirectional=True)`` with the same weights
    (tested). The fixed length is what lets ``torch.export`` keep the sequence length dynamic; an
    ``nn.GRU`` over a dynamic length is specialised to the example's length.
    """

    def __init__(self, dim: int = EMBEDDING, hidden: int = HIDDEN) -> None:
        super().__init__()
        self.reduce = nn.Linear(dim, hidden)
        self.forward_gru = nn.GRU(hidden, hidden, batch_first=True)
        self.backward_gru = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(2 * hidden, len(CLASSES))
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _run(gru: nn.GRU, sequence: torch.Tensor) -> torch.Tensor:
        n = sequence.shape[0]
        torch._check(n <= MAX_SLICES, lambda: f"a sequence of more than {MAX_SLICES} slices")
        padded = nn.functional.pad(sequence, (0, 0, 0, MAX_SLICES - n)).unsqueeze(0)
        return gru(padded)[0][0, :n]

    def forward(self, features: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.reduce(features))
        both = torch.cat([self._run(self.forward_gru, h), self._run(self.backward_gru, h.flip(0)).flip(0)], dim=1)
        return logits + self.out(both)


def build_context_head(kind: str) -> nn.Module:
    if kind == "conv1d":
        return ConvContext()
    if kind == "bigru":
        return GRUContext()
    raise ValueError(f"unknown learned context {kind!r}; use one of {CONTEXTS[1:]}")


class SequenceModel(nn.Module):
    """One patient's sequence ``(S, 3, H, W)`` -> ``(S, 10)``: per-slice logits, context logits."""

    def __init__(self, slice_model: nn.Module, context: nn.Module) -> None:
        super().__init__()
        self.slice_model = slice_model
        self.context = context

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        features = self.slice_model.features(slices)
        logits = self.slice_model.classify(features)
        return torch.cat([logits, self.context(features.float(), logits.float())], dim=1)


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
    from hemo_model.data import SliceDataset
    from hemo_model.inference import autocast
    from hemo_model.transforms import to_model_input

    slice_model = slice_model.to(device).eval()
    loader = torch.utils.data.DataLoader(SliceDataset(patients, image_size, channels=channels), batch_size=batch_size,
                                         num_workers=workers)
    features, logits = [], []
    for images, _ in loader:
        images = to_model_input(images, device)
        with autocast(device, precision):
            f = slice_model.features(images)
            z = slice_model.classify(f)
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


def fit_context_head(head: nn.Module, train: list[Embedded], validate: Callable[[nn.Module], float],
                     loss_fn: nn.Module, epochs: int, lr: float, seed: int, select: Callable[[list], int],
                     on_epoch: Callable[[EpochRecord], None] | None = None) -> tuple[list[EpochRecord], int, dict]:
    """Fit ``head`` on frozen embeddings, one sequence per step, in a seeded order. Returns the
    history, the selected epoch (``select(history)`` after each epoch) and its weights."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr, weight_decay=1e-4)
    history: list[EpochRecord] = []
    chosen, state = 0, copy.deepcopy(head.state_dict())
    for epoch in range(1, epochs + 1):
        head.train()
        started, total = time.perf_counter(), 0.0
        for i in torch.randperm(len(train), generator=generator).tolist():
            item = train[i]
            loss = loss_fn(head(item.features, item.logits), item.labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        seconds = time.perf_counter() - started
        head.eval()
        record = EpochRecord(epoch, total / max(len(train), 1), float(validate(head)), lr, seconds,
                            sum(len(t.features) for t in train) / max(seconds, 1e-9))
        history.append(record)
        if select(history) == epoch:
            chosen, state = epoch, copy.deepcopy(head.state_dict())
        if on_epoch is not None:
            on_epoch(record)
    head.load_state_dict(state)
    return history, chosen, state


def head_scores(head: nn.Module, embedded: list[Embedded]) -> tuple[np.ndarray, np.ndarray]:
    """(context logits, per-slice logits), each (N, 5) over all slices in order."""
    head.eval()
    with torch.no_grad():
        context = [head(e.features, e.logits) for e in embedded]
    return torch.cat(context).numpy(), torch.cat([e.logits for e in embedded]).numpy()
