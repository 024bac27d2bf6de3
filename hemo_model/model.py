"""ResNet34 with the method's head, a 5-slice context wrapper, and model I/O.

The original kept torchvision's ImageNet ResNet34 (1000-d output) and put a head on top:
Linear 256 -> BN -> ReLU -> Dropout -> Linear 5. We keep that shape so a local ImageNet
weights file loads unchanged; weights are never downloaded (training from scratch is default).

Two on-disk forms, both rebuilt from a :class:`~hemo_model.spec.ModelSpec` by this code:

* a training checkpoint (``torch.save``: weights, spec, optimizer and RNG state for resuming),
  read only with ``weights_only=True``, so a pickled payload is refused, not run;
* a model folder (``spec.json`` + ``model.safetensors``), the registered form: plain JSON and raw
  tensors, with no pickle anywhere, whatever bytes the folder holds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models import resnet34

from hemo_model import CLASSES
from hemo_model.spec import CONTEXT_WEIGHTS, ModelSpec, SpecError

__all__ = ["CONTEXT_WEIGHTS", "ContextModel", "HemoNet", "ModelSpec", "build_model", "load_checkpoint",
           "read_model_folder", "save_checkpoint", "save_model_folder"]

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


def _resnet34(spec: ModelSpec, pretrained: Path | None) -> nn.Module:
    return HemoNet(spec.head, spec.dropout, pretrained)


BUILDERS: dict[str, Callable[[ModelSpec, Path | None], nn.Module]] = {"resnet34": _resnet34}
"""Per-slice network builders by :attr:`ModelSpec.architecture` (see :data:`hemo_model.spec.ARCHITECTURES`)."""


def build_model(spec: ModelSpec, pretrained: Path | None = None) -> nn.Module:
    """The per-slice network the spec names, or for a learned context a SequenceModel around it."""
    slice_model = BUILDERS[spec.architecture](spec, pretrained)
    if spec.context == "filter":
        return slice_model
    from hemo_model.context import SequenceModel, build_context_head

    return SequenceModel(slice_model, build_context_head(spec.context))


def save_checkpoint(path: Path, model: nn.Module, spec: ModelSpec, **extra: Any) -> None:
    """Atomic save (temp file + rename) of weights, spec and any extra training state."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"model_state": model.state_dict(), "spec": spec.to_dict(), **extra}
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


def load_checkpoint(path: Path) -> tuple[nn.Module, ModelSpec, dict[str, Any]]:
    """Rebuild the model from a checkpoint written by :func:`save_checkpoint` (CPU tensors).
    Raises :class:`CheckpointError` with the reason when the file is not one."""
    payload = _read_payload(path)
    if not isinstance(payload, dict) or "model_state" not in payload:
        raise CheckpointError("not a hemo checkpoint (a torch file without model_state/spec)")
    if "spec" not in payload:
        raise CheckpointError("written by an earlier release (it has no model spec); re-create it with `hemo train`"
                              " / `hemo refine`")
    try:
        spec = ModelSpec.from_dict(payload["spec"])
    except SpecError as exc:
        raise CheckpointError(f"its model spec is not one this release knows: {exc}") from exc
    model = build_model(spec)
    try:
        model.load_state_dict(payload["model_state"])
    except (TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"its weights do not fit the model it describes ({type(exc).__name__})") from exc
    return model, spec, payload


# --- the registered form: spec.json + model.safetensors ------------------------------------------

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "model.safetensors"
MAX_SPEC_BYTES = 64 * 1024


class ModelFileError(ValueError):
    """A model folder that cannot be used; the message says which file and why."""


def save_model_folder(folder: Path, model: nn.Module, spec: ModelSpec) -> None:
    """Write ``spec.json`` and ``model.safetensors`` (CPU tensors, names as in ``state_dict``)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().to("cpu").contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": spec.to_dict()["format"]})
    (folder / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=2) + "\n")


def read_model_folder(folder: Path) -> tuple[nn.Module, ModelSpec]:
    """Rebuild the network of a model folder: the spec (strict JSON) decides the architecture,
    this library builds it, and the safetensors file fills it; every tensor name, shape and dtype
    must match exactly. Nothing is unpickled; no other file of the folder is opened."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spec_path, weights_path = folder / SPEC_FILE, folder / WEIGHTS_FILE
    for path in (spec_path, weights_path):
        if path.is_symlink() or not path.is_file():
            raise ModelFileError(f"{path.name} is missing (or not a plain file)")
    if spec_path.stat().st_size > MAX_SPEC_BYTES:
        raise ModelFileError(f"{SPEC_FILE} is {spec_path.stat().st_size} bytes, more than a spec can be "
                             f"({MAX_SPEC_BYTES})")
    try:
        raw = json.loads(spec_path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
        spec = ModelSpec.from_dict(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, SpecError) as exc:
        raise ModelFileError(f"{SPEC_FILE}: {exc}") from exc
    model = build_model(spec)
    try:
        state = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{WEIGHTS_FILE} is not a readable safetensors file ({exc})") from exc
    expected = model.state_dict()
    wrong = sorted(set(expected) ^ set(state))
    wrong += [k for k in expected if k in state and (state[k].shape != expected[k].shape
                                                     or state[k].dtype != expected[k].dtype)]
    if wrong:
        raise ModelFileError(f"{WEIGHTS_FILE} does not fit the {spec.architecture}/{spec.head}/{spec.context} network "
                             f"its spec describes ({len(wrong)} tensor(s) missing, extra or of another shape or "
                             f"dtype, e.g. {wrong[0]!r})")
    model.load_state_dict(state, strict=True)
    return model.eval(), spec


def _refuse_constant(name: str) -> Any:
    raise SpecError(f"{name} is not a number a spec may hold")
