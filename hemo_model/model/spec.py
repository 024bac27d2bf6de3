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

SPEC_FORMAT = "hemo-model-spec/2"
"""The format name written into every spec; a spec with another is refused."""
READABLE_FORMATS = ("hemo-model-spec/1", SPEC_FORMAT)
"""Formats this release reads: /1 predates calibration (read as uncalibrated, ``calibration`` None;
an uncalibrated spec is still written as /1, so an older release reads it); /2 must carry the
``calibration`` key."""

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


EXAM_COLUMNS = ("any", *CLASSES)
"""The exam-level columns: any hemorrhage, then each class."""
CALIBRATION_MODES = ("context", "single")


@dataclass(frozen=True)
class Calibration:
    """How the served logits become probabilities that mean what they say, and the triage cut-offs
    on them, as fitted by `hemo evaluate` on the `val` role (issue 20).

    Slices: per class p = sigmoid((z - shift) / temperature) on the logits of the scoring mode
    the version is served in (``mode``); a score in the other mode is left uncalibrated. Exams: the
    exam rule (max over slices) of the calibrated slice probabilities, then a second Platt scaling
    per exam column (any, then the five classes): the max over a series is not itself calibrated.
    Triage on the calibrated P(any): low risk below ``low_risk_below``, high risk above
    ``high_risk_above``, else defer (:mod:`hemo_model.inference.triage`); ``low_risk_below`` 0 means
    val had too few positive exams to call any exam low risk at ``low_risk_target``."""

    mode: str
    slice_temperatures: tuple[float, ...]
    slice_shifts: tuple[float, ...]
    exam_rule: str
    exam_temperatures: tuple[float, ...]
    exam_shifts: tuple[float, ...]
    low_risk_below: float
    high_risk_above: float
    low_risk_target: float
    high_risk_target: float
    n_slices: int
    n_exams: int
    n_positive_exams: int
    fitted_on_trained_patients: bool
    """The val patients were trained on (train.refit_on_val): the calibration is optimistic."""

    def __post_init__(self) -> None:
        for name in ("slice_temperatures", "slice_shifts", "exam_temperatures", "exam_shifts"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_calibration(self)

    @classmethod
    def from_dict(cls, raw: Any) -> Calibration:
        if not isinstance(raw, Mapping):
            raise SpecError(f"calibration must be a JSON object or null, got {type(raw).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown, missing = sorted(set(raw) - set(known)), [k for k in known if k not in raw]
        if unknown or missing:
            raise SpecError(f"calibration: unknown key(s) {unknown}, missing key(s) {missing}")
        flag = raw["fitted_on_trained_patients"]
        if not isinstance(flag, bool):
            raise SpecError(f"calibration.fitted_on_trained_patients must be true or false, got {flag!r}")
        return cls(
            mode=_text(raw, "mode"), exam_rule=_text(raw, "exam_rule"),
            slice_temperatures=_numbers(raw, "slice_temperatures"), slice_shifts=_numbers(raw, "slice_shifts"),
            exam_temperatures=_numbers(raw, "exam_temperatures"), exam_shifts=_numbers(raw, "exam_shifts"),
            low_risk_below=_number(raw, "low_risk_below"), high_risk_above=_number(raw, "high_risk_above"),
            low_risk_target=_number(raw, "low_risk_target"), high_risk_target=_number(raw, "high_risk_target"),
            n_slices=_integer(raw, "n_slices"), n_exams=_integer(raw, "n_exams"),
            n_positive_exams=_integer(raw, "n_positive_exams"),
            fitted_on_trained_patients=flag,
        )


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
    calibration: Calibration | None = None
    """Fitted on `val` by `hemo evaluate` and applied by `hemo score`; None: probabilities as the
    network gives them (a checkpoint before evaluate, or a spec of format /1)."""

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
        def plain(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: plain(v) for k, v in value.items()}
            return list(value) if isinstance(value, tuple) else value

        values = plain(dataclasses.asdict(self))
        if self.calibration is None:  # readable by the release before calibration (rollbacks, older hosts)
            del values["calibration"]
            return {"format": READABLE_FORMATS[0], **values}
        return {"format": SPEC_FORMAT, **values}

    @classmethod
    def from_dict(cls, raw: Any) -> ModelSpec:
        """The spec in ``raw`` (as :meth:`to_dict` wrote it), or :class:`SpecError`."""
        if not isinstance(raw, Mapping):
            raise SpecError(f"a model spec must be a JSON object, got {type(raw).__name__}")
        if raw.get("format") not in READABLE_FORMATS:
            raise SpecError(f"format {raw.get('format')!r} is not one this release reads {READABLE_FORMATS}")
        known = [f.name for f in dataclasses.fields(cls)]
        if raw["format"] != SPEC_FORMAT:  # /1: written before calibration existed
            known.remove("calibration")
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
            calibration=None if raw.get("calibration") is None else Calibration.from_dict(raw["calibration"]),
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


def _check_calibration(c: Calibration) -> None:
    def require(condition: bool, message: str) -> None:
        if not condition:
            raise SpecError(f"calibration: {message}")

    require(c.mode in CALIBRATION_MODES, f"mode {c.mode!r}: known {CALIBRATION_MODES}")
    require(c.exam_rule == "max", f"exam_rule {c.exam_rule!r}: known ('max',)")
    for name, width in (("slice_temperatures", len(CLASSES)), ("slice_shifts", len(CLASSES)),
                        ("exam_temperatures", len(EXAM_COLUMNS)), ("exam_shifts", len(EXAM_COLUMNS))):
        values = getattr(c, name)
        require(len(values) == width and all(math.isfinite(v) for v in values),
                f"{name} must be {width} finite numbers, got {list(values)}")
    require(all(t > 0 for t in (*c.slice_temperatures, *c.exam_temperatures)), "temperatures must be positive")
    require(all(0.0 < t < 1.0 for t in (c.low_risk_target, c.high_risk_target)), "targets must be in (0, 1)")
    require(all(-1.0 <= v <= 2.0 and math.isfinite(v) for v in (c.low_risk_below, c.high_risk_above)),
            "cut-offs must be probabilities (or just outside [0, 1] where a bin is closed)")
    require(min(c.n_slices, c.n_exams, c.n_positive_exams) >= 0 and c.n_positive_exams <= c.n_exams,
            "counts must be non-negative, positive exams at most the exams")


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
