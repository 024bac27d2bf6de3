"""Learned context over a whole slice sequence: the RSNA 2019 winners' approach, as an option.

The method combines neighbouring slices with a fixed 5-tap filter of logits. The alternative
learns how to combine them: a small head reads the per-slice embeddings of a patient's whole
sequence (a 1-D convolution along z, or a bidirectional GRU) and adds a correction to each
slice's logits. The correction's last layer starts at zero, so before training the sequence model
scores exactly like the per-slice model it wraps. The registered model is one
:class:`SequenceModel`: ``(S, 3, H, W)`` slices of one sequence in, ``(S, 10)`` out (per-slice
logits, then context logits), so `--context 1` still works. Training: :mod:`hemo_model.training.context_head`.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
from torch import nn

from hemo_model import CLASSES

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
        nn.init.zeros_(self.out.bias)  # type: ignore[arg-type]  # Conv1d has a bias here (bias=True)

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


class SliceNetwork(Protocol):
    """A per-slice network that exposes its embedding (as :class:`hemo_model.model.networks.HemoNet`)."""

    def features(self, x: torch.Tensor) -> torch.Tensor: ...

    def classify(self, features: torch.Tensor) -> torch.Tensor: ...


class SequenceModel(nn.Module):
    """One patient's sequence ``(S, 3, H, W)`` -> ``(S, 10)``: per-slice logits, context logits."""

    def __init__(self, slice_model: nn.Module, context: nn.Module) -> None:
        super().__init__()
        self.slice_model = slice_model
        self.context = context

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        network = cast(SliceNetwork, self.slice_model)
        features = network.features(slices)
        logits = network.classify(features)
        return torch.cat([logits, self.context(features.float(), logits.float())], dim=1)
