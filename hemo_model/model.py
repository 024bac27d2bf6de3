"""ResNet34 with the method's head, a 5-slice context wrapper, and checkpoint I/O.

The original kept torchvision's ImageNet ResNet34 (1000-d output) and put a head on top:
Linear 256 -> BN -> ReLU -> Dropout -> Linear 5. We keep that shape so a local ImageNet
weights file loads unchanged; weights are never downloaded (training from scratch is default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet34

from hemo_model import CLASSES

CONTEXT_WEIGHTS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.3, 0.1)
"""The method's 5-slice weights for slices k-2..k+2 (not normalised: they sum to 1.3)."""


@dataclass
class ModelConfig:
    head: str = "method"  # "method" (1000 -> 256 -> BN -> ReLU -> Dropout -> 5) or "linear" (512 -> 5)
    dropout: float = 0.5
    image_size: int = 512
    context_weights: tuple[float, ...] = CONTEXT_WEIGHTS
    thresholds: list[float] = field(default_factory=lambda: [0.5] * len(CLASSES))
    """Per-class decision thresholds for 5-slice context scores (tuned on the ``val`` role)."""
    thresholds_single: list[float] = field(default_factory=lambda: [0.5] * len(CLASSES))
    """The same for single-slice scores: context logits are scaled differently (weights sum to 1.3)."""
    input: str = "gray"
    """``gray`` (one channel repeated to 3) or ``windows3`` (three CT windows as the channels)."""
    context: str = "filter"
    """How neighbouring slices are used: the method's fixed 5-tap ``filter`` of logits, or a learned
    head over per-slice embeddings along the whole sequence (``conv1d`` or ``bigru``)."""

    def thresholds_for(self, context: int) -> list[float]:
        return list(self.thresholds if context > 1 else self.thresholds_single)

    @property
    def channels(self) -> int:
        return 3 if self.input == "windows3" else 1


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

    def __init__(self, slice_model: nn.Module, weights: Sequence[float] = CONTEXT_WEIGHTS) -> None:
        super().__init__()
        self.slice_model = slice_model
        self.register_buffer("weights", torch.tensor(list(weights), dtype=torch.float32))

    def forward(self, windows: torch.Tensor) -> torch.Tensor:
        batch, width = windows.shape[:2]
        logits = self.slice_model(windows.flatten(0, 1)).view(batch, width, -1)
        return (logits.float() * self.weights.view(1, width, 1)).sum(dim=1)


def build_model(config: ModelConfig, pretrained: Path | None = None) -> nn.Module:
    """The per-slice HemoNet, or for a learned context a SequenceModel around it."""
    slice_model = HemoNet(config.head, config.dropout, pretrained)
    if config.context == "filter":
        return slice_model
    from hemo_model.context import SequenceModel, build_context_head

    return SequenceModel(slice_model, build_context_head(config.context))


def save_checkpoint(path: Path, model: nn.Module, config: ModelConfig, **extra: Any) -> None:
    """Atomic save (temp file + rename) of weights, config and any extra training state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model_state": model.state_dict(), "config": asdict(config), **extra}
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)


class CheckpointError(ValueError):
    """A file that is not a usable hemo checkpoint; the message says which way it is not."""


def _read_payload(path: Path) -> Any:
    """``torch.load`` with ``weights_only`` (no code runs), failures sorted into what they mean."""
    import pickle
    import zipfile

    size = path.stat().st_size
    with path.open("rb") as handle:
        magic = handle.read(4)
    if size == 0:
        raise CheckpointError("the file is empty (an interrupted copy or write?)")
    if magic == b"PK\x03\x04" and not zipfile.is_zipfile(path):
        raise CheckpointError(f"the file is truncated ({size} bytes, the archive has no end): an interrupted "
                              "write or copy")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" in str(exc):  # weights_only met a class or function reference: pickled code, refused
            raise CheckpointError("not a hemo checkpoint: it references Python code that only full unpickling "
                                  "would import and run (refused)") from exc
        raise CheckpointError("not a PyTorch checkpoint (the content is not a torch.save archive)") from exc
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"not a readable PyTorch checkpoint ({type(exc).__name__})") from exc


def load_checkpoint(path: Path) -> tuple[HemoNet, ModelConfig, dict[str, Any]]:
    """Rebuild the model from a checkpoint written by :func:`save_checkpoint` (CPU tensors).
    Raises :class:`CheckpointError` with the reason when the file is not one."""
    payload = _read_payload(path)
    if not isinstance(payload, dict) or "model_state" not in payload or "config" not in payload:
        raise CheckpointError("not a hemo checkpoint (a torch file without model_state/config)")
    raw = dict(payload["config"])
    raw["context_weights"] = tuple(raw.get("context_weights", CONTEXT_WEIGHTS))
    known = {f.name for f in fields(ModelConfig)}
    try:
        config = ModelConfig(**{k: v for k, v in raw.items() if k in known})
        model = build_model(config)
        model.load_state_dict(payload["model_state"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"its weights do not fit the model it describes ({type(exc).__name__})") from exc
    return model, config, payload
