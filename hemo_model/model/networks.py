"""ResNet34 with the method's head, the 5-slice context wrapper, and the builder registry.

The original kept torchvision's ImageNet ResNet34 (1000-d output) and put a head on top:
Linear 256 -> BN -> ReLU -> Dropout -> Linear 5. We keep that shape so a local ImageNet
weights file loads unchanged; weights are never downloaded (training from scratch is default).
Every network is built from a :class:`~hemo_model.model.spec.ModelSpec` by :func:`build_model`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet34

from hemo_model import CLASSES
from hemo_model.model.context import SequenceModel, build_context_head
from hemo_model.model.spec import CONTEXT_WEIGHTS, ModelSpec


class HemoNet(nn.Module):
    """Per-slice classifier: (B, 3, H, W) -> (B, 5) logits."""

    def __init__(self, head: str = "method", dropout: float = 0.5, pretrained: Path | None = None) -> None:
        super().__init__()
        self.backbone = resnet34(weights=None)
        if pretrained is not None:
            state = torch.load(pretrained, map_location="cpu", weights_only=True)
            self.backbone.load_state_dict(state)
        if head == "method":
            self.head: nn.Module = nn.Sequential(
                nn.Linear(1000, 256), nn.BatchNorm1d(256), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(256, len(CLASSES)),
            )
        elif head == "linear":
            self.backbone.fc = nn.Linear(self.backbone.fc.in_features, len(CLASSES))
            self.head = nn.Identity()
        else:
            raise ValueError(f"unknown head {head!r}; use 'method' or 'linear'")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 512) per-slice embeddings: the backbone up to global pooling."""
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        x = b.layer4(b.layer3(b.layer2(b.layer1(x))))
        return torch.flatten(b.avgpool(x), 1)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 5) logits from :meth:`features`."""
        return self.head(self.backbone.fc(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


class ContextModel(nn.Module):
    """Scores slices k-2..k+2 separately and returns the weighted sum of their logits.

    Used to refine with 5-slice context (the loss is taken on this sum) and as the naive
    reference scorer; inference uses the equivalent 1-forward-per-slice filter instead.
    """

    def __init__(self, slice_model: nn.Module, weights: Sequence[float] = CONTEXT_WEIGHTS,
                 freeze_batchnorm: bool = False) -> None:
        super().__init__()
        self.slice_model = slice_model
        self.freeze_batchnorm = freeze_batchnorm
        self.weights: torch.Tensor
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32))

    def train(self, mode: bool = True) -> ContextModel:
        """With ``freeze_batchnorm``, BatchNorm layers stay in eval mode while the rest trains: their
        running statistics stay stage 1's, so refinement starts from stage 1's behaviour. Trained
        at lr 1e-6 with updated statistics, they drift to the refinement batches' (60 neighbouring
        slices of 12 windows) and change every prediction although the weights barely move."""
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        batch, width = windows.shape[:2]
        logits = self.slice_model(windows.flatten(0, 1)).view(batch, width, -1)
        return (logits.float() * self.weights.view(1, width, 1)).sum(dim=1)


def _resnet34(spec: ModelSpec, pretrained: Path | None) -> nn.Module:
    return HemoNet(spec.head, spec.dropout, pretrained)


BUILDERS: dict[str, Callable[[ModelSpec, Path | None], nn.Module]] = {"resnet34": _resnet34}
"""Per-slice network builders by :attr:`ModelSpec.architecture` (see :data:`hemo_model.model.spec.ARCHITECTURES`)."""


def build_model(spec: ModelSpec, pretrained: Path | None = None) -> nn.Module:
    """The per-slice network the spec names, or for a learned context a SequenceModel around it."""
    slice_model = BUILDERS[spec.architecture](spec, pretrained)
    if spec.context == "filter":
        return slice_model
    return SequenceModel(slice_model, build_context_head(spec.context))
