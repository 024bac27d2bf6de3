"""The model spec: everything needed to rebuild and use a trained network, as data.

One :class:`ModelSpec` travels with the weights from training to serving: it is written into every
checkpoint and, as ``spec.json``, beside the safetensors weights of every registered version. A
loader rebuilds the network from the spec with this library's own code and then reads the
weights as plain tensors, so loading a model never runs code that came with it.

Reading is strict: a spec must name a format this code knows and hold exactly the known keys,
each of the right type and range. There are no silent defaults (a missing image size is an error,
never 512): a spec the code does not understand is refused with a :class:`SpecError` that says
which key is wrong.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hemo_model import CLASSES

SPEC_FORMAT = "hemo-model-spec/1"
"""The format name written into every spec; a spec with another is refused."""

ARCHITECTURES: dict[str, str] = {
    "resnet34": "torchvision ResNet34 with the method's or a linear head (hemo_model.model.HemoNet)",
}
"""The networks this code can rebuild, by the name a spec gives; each has a builder in
:data:`hemo_model.model.BUILDERS`. A team adding a network registers it in both."""
HEADS = ("method", "linear")
INPUTS = ("gray", "windows3")
CONTEXTS = ("filter", "conv1d", "bigru")
CONTEXT_WEIGHTS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.3, 0.1)
"""The method's 5-slice weights for slices k-2..k+2 (not normalised: they sum to 1.3)."""
MIN_IMAGE_SIZE, MAX_IMAGE_SIZE = 32, 4096
MAX_CONTEXT_WIDTH = 15


class SpecError(ValueError):
    """A model spec this code cannot use; the message names the key and what is wrong."""


def _default_thresholds() -> tuple[float, ...]:
    return (0.5,) * len(CLASSES)


@dataclass(frozen=True)
class ModelSpec:
    """The network (architecture, head, input, context) and how it is served (image size,
    context weights, per-class thresholds for context and single-slice scores)."""

    architecture: str = "resnet34"
    head: str = "method"
    """``method`` (1000 -> 256 -> BN -> ReLU -> Dropout -> 5) or ``linear`` (512 -> 5)."""
    dropout: float = 0.5
    image_size: int = 512
    input: str = "gray"
    """``gray`` (one channel repeated to 3) or ``windows3`` (three CT windows as the channels)."""
    context: str = "filter"
    """The method's fixed 5-tap ``filter`` of logits, or a learned head over the sequence
    (``conv1d`` or ``bigru``)."""
    context_weights: tuple[float, ...] = CONTEXT_WEIGHTS
    thresholds: tuple[float, ...] = field(default_factory=_default_thresholds)
    """Per-class decision thresholds for context scores (tuned on the ``val`` role)."""
    thresholds_single: tuple[float, ...] = field(default_factory=_default_thresholds)
    """The same for single-slice scores: context logits are scaled differently (weights sum to 1.3)."""
    classes: tuple[str, ...] = CLASSES

    def __post_init__(self) -> None:
        for name in ("context_weights", "thresholds", "thresholds_single", "classes"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check(self)

    @property
    def channels(self) -> int:
        return 3 if self.input == "windows3" else 1

    def thresholds_for(self, context: int) -> list[float]:
        """The thresholds tuned for this scoring mode (context logits are scaled differently)."""
        return list(self.thresholds if context > 1 else self.thresholds_single)

    def weights_for(self, context: int) -> list[float]:
        return list(self.context_weights) if context > 1 else [1.0]

    def replace(self, **changes: Any) -> ModelSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with the format name first."""
        values = dataclasses.asdict(self)
        return {"format": SPEC_FORMAT, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}

    @classmethod
    def from_dict(cls, raw: Any) -> ModelSpec:
        """The spec in ``raw`` (as :meth:`to_dict` wrote it), or :class:`SpecError`."""
        if not isinstance(raw, Mapping):
            raise SpecError(f"a model spec must be a JSON object, got {type(raw).__name__}")
        if raw.get("format") != SPEC_FORMAT:
            raise SpecError(f"format {raw.get('format')!r} is not one this release reads ({SPEC_FORMAT!r})")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(raw) - set(known) - {"format"})
        if unknown:
            raise SpecError(f"unknown key(s) {unknown} (known: {', '.join(known)})")
        missing = [k for k in known if k not in raw]
        if missing:
            raise SpecError(f"missing key(s) {missing}: no value is filled in by default")
        return cls(
            architecture=_text(raw, "architecture"), head=_text(raw, "head"), dropout=_number(raw, "dropout"),
            image_size=_integer(raw, "image_size"), input=_text(raw, "input"), context=_text(raw, "context"),
            context_weights=_numbers(raw, "context_weights"), thresholds=_numbers(raw, "thresholds"),
            thresholds_single=_numbers(raw, "thresholds_single"), classes=_texts(raw, "classes"),
        )


def _check(spec: ModelSpec) -> None:
    def require(condition: bool, message: str) -> None:
        if not condition:
            raise SpecError(message)

    require(spec.architecture in ARCHITECTURES, f"architecture {spec.architecture!r}: known {sorted(ARCHITECTURES)}")
    require(spec.head in HEADS, f"head {spec.head!r}: known {HEADS}")
    require(spec.input in INPUTS, f"input {spec.input!r}: known {INPUTS}")
    require(spec.context in CONTEXTS, f"context {spec.context!r}: known {CONTEXTS}")
    require(0.0 <= spec.dropout < 1.0, f"dropout {spec.dropout} must be in [0, 1)")
    require(MIN_IMAGE_SIZE <= spec.image_size <= MAX_IMAGE_SIZE,
            f"image_size {spec.image_size} must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}]")
    width = len(spec.context_weights)
    require(1 <= width <= MAX_CONTEXT_WIDTH and width % 2 == 1,
            f"context_weights must be an odd number (1..{MAX_CONTEXT_WIDTH}) of weights, got {width}")
    require(all(math.isfinite(w) for w in spec.context_weights), "context_weights must be finite numbers")
    require(spec.classes == CLASSES, f"classes {list(spec.classes)} must be {list(CLASSES)} in this order")
    for name in ("thresholds", "thresholds_single"):
        values = getattr(spec, name)
        require(len(values) == len(CLASSES) and all(0.0 <= t <= 1.0 for t in values),
                f"{name} must be {len(CLASSES)} numbers in [0, 1], got {list(values)}")


def _text(raw: Mapping[str, Any], key: str) -> str:
    value = raw[key]
    if not isinstance(value, str):
        raise SpecError(f"{key} must be a string, got {value!r}")
    return value


def _integer(raw: Mapping[str, Any], key: str) -> int:
    value = raw[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"{key} must be an integer, got {value!r}")
    return value


def _number(raw: Mapping[str, Any], key: str) -> float:
    value = raw[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SpecError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _numbers(raw: Mapping[str, Any], key: str) -> tuple[float, ...]:
    value = raw[key]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise SpecError(f"{key} must be a list of numbers, got {value!r}")
    return tuple(_number({key: v}, key) for v in value)


def _texts(raw: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = raw[key]
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise SpecError(f"{key} must be a list of strings, got {value!r}")
    return tuple(_text({key: v}, key) for v in value)
