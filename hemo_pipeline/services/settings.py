"""Typed settings: the one reader of ``params.yaml``.

Every step, the resume fingerprint and the orchestrators read configuration through here, so a
setting means the same thing everywhere. One frozen dataclass per ``params.yaml`` section; its
defaults are the published method (``../shared/method.md``), so a missing file or key falls back to
the method and the CPU demo profile in ``params.yaml`` only shrinks sizes and epochs.

Precedence: method defaults < ``params.yaml`` < ``--set section.key=value`` < a step's own flags.
Unknown sections and keys, and values of the wrong type, are rejected with the file and the key
named (a typo such as ``train.epoch`` must not silently fall back to the default).

Only the standard library and PyYAML are imported: the Airflow DAG imports this at parse time.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from hemo_pipeline.services.errors import UserError

DEFAULT_PARAMS = Path("params.yaml")
Precision = Literal["fp32", "bf16"]


@dataclass(frozen=True)
class DataSettings:
    """Where the data lives (DLCV layout: train.csv, train/, test/) and how slices are read."""

    root: str = "data"
    max_image_size: int = 1024
    """Pixel budget for one slice: max_image_size^2 pixels, checked from the header before decoding
    (PIL's decompression-bomb limit is set to the same)."""
    workers: int | Literal["auto"] = "auto"
    """DataLoader worker processes for every step that reads slices. auto: min(CPU cores, 16) on a
    GPU, 0 on the CPU (there the model needs every core); 0 keeps loading in-process."""
    cache_dir: str | None = None
    """Where decoded slice caches (uint8 memory maps, one per image size) are kept and reused
    across runs; null keeps the cache in memory (train.cache_images)."""

    def check(self) -> None:
        _require(self.max_image_size >= 32, "data.max_image_size must be at least 32")
        _require(self.workers == "auto" or self.workers >= 0, "data.workers must be auto or >= 0")

    def loader_workers(self, device_type: str) -> int:
        import os

        if self.workers != "auto":
            return int(self.workers)
        return min(os.cpu_count() or 1, 16) if device_type == "cuda" else 0


@dataclass(frozen=True)
class SynthSettings:
    """The phantom sample that `make run` generates when data/ is absent."""

    train_patients: int = 40
    test_patients: int = 10
    image_size: int = 512
    seed: int = 0

    def check(self) -> None:
        _require(self.train_patients >= 1 and self.test_patients >= 0, "synth.train_patients must be >= 1 and "
                 "synth.test_patients >= 0")
        _require(self.image_size >= 32, f"synth.image_size {self.image_size} is too small to draw a head; use >= 32")


@dataclass(frozen=True)
class ValidateSettings:
    """What `hemo validate` accepts."""

    min_slices: int = 22
    max_slices: int = 40
    image_size: int | None = None
    """Required slice size in px; null = any square size >= min_image_size, the same for every slice."""
    min_image_size: int = 64

    def check(self) -> None:
        _require(1 <= self.min_slices <= self.max_slices,
                 f"validate slice bounds {self.min_slices}..{self.max_slices} are invalid; need 1 <= min <= max")
        _require(self.image_size is None or self.image_size >= 1, "validate.image_size must be null or >= 1")


@dataclass(frozen=True)
class SplitSettings:
    """Patient roles by hash bucket of (salt, patient id): ``train``, ``val`` (epoch selection,
    refine decision, thresholds) and ``gate`` (held out for the gate and the reported evaluation).
    Changing the salt or a fraction reassigns patients: the gate then refuses to compare models
    trained under the old assignment."""

    val_fraction: float = 135 / 1535
    """The original held out 135 of 1,535 patients for validation."""
    gate_fraction: float = 0.1
    """Not in the method: a held-out set that no model selection decision has seen."""
    salt: str = "hemo-roles-v1"

    def check(self) -> None:
        _require(0.0 < self.val_fraction < 1.0 and 0.0 < self.gate_fraction < 1.0
                 and self.val_fraction + self.gate_fraction < 1.0,
                 f"split fractions val {self.val_fraction} + gate {self.gate_fraction} must each be in (0, 1) "
                 "and leave patients for training")
        _require(bool(self.salt), "split.salt must not be empty")


@dataclass(frozen=True)
class ModelSettings:
    """The network."""

    head: Literal["auto", "method", "linear"] = "auto"
    """auto: the method's head (1000 -> 256 -> BN -> ReLU -> Dropout -> 5) on top of pretrained
    weights, where it was designed to sit; a linear 512 -> 5 head when training from scratch, which
    learns much faster there (README, "Model quality")."""
    dropout: float = 0.5
    pretrained: str | None = None
    """Path to a local torchvision resnet34 state_dict; null = from scratch."""
    input: Literal["gray", "windows3"] = "gray"
    """gray: the 8-bit brain-window slice repeated to 3 channels (the method); windows3: brain,
    subdural and bone windows as the 3 channels (RGB PNG slices from `hemo import-dicom --windows`)."""
    context: Literal["filter", "conv1d", "bigru"] = "filter"
    """How neighbouring slices are used: the method's fixed 5-tap filter (refined at a low lr), or a
    head learned over the per-slice embeddings of the whole sequence (trained by `hemo refine`)."""

    def resolved_head(self) -> str:
        """The head `auto` stands for: the method's on pretrained weights, linear from scratch."""
        if self.head != "auto":
            return self.head
        return "method" if self.pretrained else "linear"


@dataclass(frozen=True)
class TrainSettings:
    """Stage 1: single slices."""

    image_size: int = 512
    epochs: int = 20
    batch_size: int = 20
    lr: float = 1e-4
    weight_decay: float = 1e-4
    step_size: int = 10
    gamma: float = 0.5
    loss: Literal["asl", "bce"] = "asl"
    reduction: Literal["sum", "mean"] = "sum"
    gamma_neg: float = 4.0
    gamma_pos: float = 1.0
    clip: float = 0.05
    precision: Precision = "fp32"
    seed: int = 0
    cache_images: bool = False
    """Decode every training/validation slice once per run (data.cache_dir: once per image size)."""
    max_steps: int | None = None
    sampling: Literal["uniform", "repeat_factor"] = "uniform"
    """uniform (the method) or repeat_factor: slices of rare classes drawn more often, the same
    steps per epoch (hemo_model.training.sampling; stage 1 and the refinement; a learned context
    head, model.context conv1d/bigru, trains on whole sequences and stays uniform)."""
    repeat_threshold: float = 0.2
    """repeat_factor: a class on a fraction f < t of the training slices is drawn about sqrt(t/f)
    times as often (0.2: EDH at 4 % about 2.2x; classes above t are not lifted)."""
    refit_on_val: bool = False
    """A final refit: the val role's patients train too (stage 1 and refinement), once the recipe
    is fixed. Nothing is left to choose on, so the configured epochs run and the last moves on,
    refinement is kept untested and thresholds stay at 0.5 (`hemo evaluate` sees the val patients
    among the trained ones); the gate role stays unseen. Off by default (the method holds val out);
    `hemo ablate` always holds val out, since it compares recipes on it."""

    def check(self) -> None:
        _require(self.epochs >= 1, "train.epochs must be at least 1")
        _require(0.0 < self.repeat_threshold <= 1.0, "train.repeat_threshold must be in (0, 1]")
        _require(self.image_size >= 32, "train.image_size must be at least 32")
        _require(self.batch_size >= 1, "train.batch_size must be >= 1")
        _require(self.max_steps is None or self.max_steps >= 1, "train.max_steps must be null or >= 1")


@dataclass(frozen=True)
class RefineSettings:
    """Stage 2: 5-slice context at a low learning rate (loss, precision, seed as in `train`)."""

    epochs: int = 5
    """The method gives no epoch count for refinement."""
    batch_size: int = 12
    lr: float = 1e-6
    max_steps: int | None = None
    head_epochs: int = 30
    """Learned context heads (model.context conv1d/bigru): epochs over the frozen embeddings."""
    head_lr: float = 1e-3
    batchnorm: str = "frozen"
    """frozen: BatchNorm keeps stage 1's running statistics during refinement (the method is silent;
    updating them at lr 1e-6 re-estimates them on refinement batches and changed the demo's
    predictions more than the weights did); train: update them as `model.train()` does."""

    def check(self) -> None:
        _require(self.epochs >= 1 and self.batch_size >= 1, "refine.epochs and refine.batch_size must be >= 1")
        _require(self.batchnorm in ("frozen", "train"), f"refine.batchnorm must be frozen or train, not {self.batchnorm!r}")
        _require(self.head_epochs >= 1 and self.head_lr > 0, "refine.head_epochs must be >= 1 and head_lr > 0")
        _require(self.max_steps is None or self.max_steps >= 1, "refine.max_steps must be null or >= 1")


@dataclass(frozen=True)
class SelectionSettings:
    """Which epoch moves on (train's best.pt) and whether refinement is kept, decided on the `val`
    role only when it can bear the decision: a handful of patients makes "best epoch" noise."""

    rule: Literal["auto", "best", "last", "ema"] = "auto"
    """auto: `best` when the val role has min_val_patients and min_val_positives per class, else `last`."""
    min_val_patients: int = 30
    min_val_positives: int = 20
    """Positive slices per class in the val role."""
    ema_alpha: float = 0.5
    """Smoothing of the `ema` rule (weight of the newest epoch)."""

    def check(self) -> None:
        _require(0.0 < self.ema_alpha <= 1.0, "selection.ema_alpha must be in (0, 1]")


@dataclass(frozen=True)
class EvaluateSettings:
    precision: Precision = "fp32"
    batch_size: int = 32
    tune_thresholds: bool = True
    """Per-class thresholds tuned on the `val` role and stored with the model."""
    min_tune_positives: int = 20
    """A class with fewer positive slices in `val` keeps threshold 0.5 (said in one line): tuned on a
    handful of slices, a threshold fits them, not the class. 0 tunes every class."""
    min_tune_patients: int = 10
    """A class positive in fewer `val` patients keeps threshold 0.5 too: one patient's slices move
    together, so positive slices from a few patients tune the threshold to those patients. Ten events
    per fitted parameter is the usual floor; on the phantom sets of README "Model quality" (2-10 val
    patients) tuning below it lowered the gate role's micro-F2 in 7 of 8 runs. 0 counts slices only."""
    examples: int = 8
    calibrate: bool = True
    """Fit the calibration and the triage cut-offs on `val` and store them with the model (issue 20);
    `hemo score` applies them. Off: probabilities as the network gives them, every exam deferred."""
    low_risk_fnr: float = 0.05
    """Triage target: the expected fraction of bleeding exams called "low risk" (conformal risk
    control on the val exams: at least 1 / target - 1 positive val exams are needed to open the bin)."""
    high_risk_fpr: float = 0.10
    """Triage target: the expected fraction of exams without a bleed called "high risk"."""
    pointing_slices: int = 1
    """Pointing game on the gate patients with outlined lesions (``data/masks``): per exam and flagged
    type, the saliency maps of this many top evidence slices are checked against the lesion (1: the
    one `hemo score --overlays` shows; each map costs 225 forward passes of one slice). 0: off."""

    def check(self) -> None:
        _require(0.0 < self.low_risk_fnr < 1.0 and 0.0 < self.high_risk_fpr < 1.0,
                 "evaluate.low_risk_fnr and evaluate.high_risk_fpr must be in (0, 1)")
        _require(self.pointing_slices >= 0, "evaluate.pointing_slices must be >= 0 (0 turns the pointing game off)")
        _require(self.min_tune_positives >= 0 and self.min_tune_patients >= 0,
                 "evaluate.min_tune_positives and evaluate.min_tune_patients must be >= 0")


@dataclass(frozen=True)
class GateSettings:
    """The promotion policy (README, "Trustworthy promotion"; docs/gate_policy.md gives the reasoning
    and the simulation behind every default). Defaults equal hemo_model.metrics.gate_statistics'
    (tested); a margin of -1 or a floor of 0 turns its rule off (the tiny-data tests do)."""

    mode: Literal["superiority", "noninferiority"] = "superiority"
    """superiority: the challenger must be shown better than the champion; noninferiority: shown no
    worse than ni_margin, and only with an approved @reference whose drift budget bounds a chain."""
    alpha: float = 0.025
    """One-sided level of the paired permutation test on the observed micro-F2 gain."""
    bound_alpha: float = 0.01
    """Level of the jackknife-t lower bounds (non-inferiority, the drift budget); calibrated by simulation."""
    alpha_spending: bool = False
    """Spend alpha over repeated decisions on one gate set (alpha * 6 / (pi^2 k^2)); off: see docs/gate_policy.md."""
    min_improvement: float = 0.005
    """Observed micro-F2 gain over the champion the challenger must also reach (superiority)."""
    min_margin_over_trivial: float = 0.1
    """Micro-F2 above the all-positive model's on the gate patients (every model, the first included)."""
    class_margin_over_trivial: float = 0.1
    """Each class with positive patients: F2 above that class's own all-positive F2 by this much."""
    class_recall_floor: float = 0.5
    """Each class with positive patients: slice-level recall at least this."""
    exam_sensitivity_floor: float = 0.9
    """Share of bleeding patients (any class, any slice) flagged on at least one slice."""
    min_patients: int = 50
    """Fewer gate patients than this: the gate refuses (exit 2); a person may promote by hand."""
    min_positive_patients: int = 3
    """Fewer positive gate patients than this for any class: the gate refuses likewise."""
    max_class_drop: float = 0.05
    """Largest per-class F2 drop against the champion that a superiority promotion may cost."""
    ni_margin: float = 0.02
    """Non-inferiority: how much worse (micro-F2) than the champion a challenger may be shown at most."""
    ni_class_margin: float = 0.1
    """Non-inferiority: the same per class."""
    drift_budget: float = 0.03
    """Against @reference: the most any chain of promotions may lose in micro-F2."""
    drift_class_budget: float = 0.1
    """Against @reference: the same per class."""
    permutations: int = 4000
    """Random swaps of the permutation test beyond the exactly enumerated 12 patients."""
    bootstrap: int = 2000
    """Resamples of the BCa intervals in the report."""
    seed: int = 0

    def check(self) -> None:
        _require(0.0 < self.alpha < 0.5 and 0.0 < self.bound_alpha < 0.5,
                 "gate.alpha and gate.bound_alpha must be in (0, 0.5)")
        _require(self.bootstrap >= 100 and self.permutations >= 100,
                 "gate.bootstrap and gate.permutations must be at least 100")
        _require(self.min_patients >= 1 and self.min_positive_patients >= 0,
                 "gate.min_patients must be >= 1 and gate.min_positive_patients >= 0 (0: a class may be absent)")
        _require(min(self.max_class_drop, self.min_improvement, self.ni_margin, self.ni_class_margin,
                     self.drift_budget, self.drift_class_budget) >= 0,
                 "gate margins, budgets and min_improvement must be >= 0")
        _require(-1.0 <= min(self.min_margin_over_trivial, self.class_margin_over_trivial) <= 1.0,
                 "gate.min_margin_over_trivial and gate.class_margin_over_trivial must be in [-1, 1] (-1: off)")
        _require(0.0 <= self.class_recall_floor <= 1.0 and 0.0 <= self.exam_sensitivity_floor <= 1.0,
                 "gate.class_recall_floor and gate.exam_sensitivity_floor must be in [0, 1] (0: off)")
        _require(self.drift_budget >= self.ni_margin and self.drift_class_budget >= self.ni_class_margin,
                 "gate drift budgets must be at least the non-inferiority margins")


@dataclass(frozen=True)
class ScoreSettings:
    context: Literal[1, 5] = 5
    precision: Precision = "fp32"
    batch_size: int = 32
    evidence_slices: int = 3
    """Per exam, the most suspicious slices named in outputs/exams.csv (for any hemorrhage and per type)."""

    def check(self) -> None:
        _require(self.evidence_slices >= 1, "score.evidence_slices must be at least 1")


SECTIONS: dict[str, type] = {
    "data": DataSettings, "synth": SynthSettings, "validate": ValidateSettings, "split": SplitSettings,
    "model": ModelSettings, "train": TrainSettings, "refine": RefineSettings, "selection": SelectionSettings,
    "evaluate": EvaluateSettings,
    "gate": GateSettings, "score": ScoreSettings,
}

RENAMED = {"split.seed": "split.salt (patients are assigned to roles by a salted hash, not a seeded shuffle)",
           "train.workers": "data.workers (one loader setting for every step)",
           "gate.precision": "score.precision (the gate scores as `hemo score` serves)",
           "gate.confidence": "gate.alpha (a one-sided level: the gate tests the gain, docs/gate_policy.md)",
           "gate.min_class_f2": "gate.class_margin_over_trivial and gate.class_recall_floor (an absolute F2 floor "
                                "cannot refuse a class the model flags everywhere)",
           "gate.batch_size": "score.batch_size (the gate scores as `hemo score` serves)"}
"""Keys of earlier releases, with what replaced them, so an old params.yaml gets a useful message."""


@dataclass(frozen=True)
class Settings:
    """All sections; ``source`` names the file they came from (for messages)."""

    data: DataSettings = field(default_factory=DataSettings)
    synth: SynthSettings = field(default_factory=SynthSettings)
    validate: ValidateSettings = field(default_factory=ValidateSettings)
    split: SplitSettings = field(default_factory=SplitSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    refine: RefineSettings = field(default_factory=RefineSettings)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    gate: GateSettings = field(default_factory=GateSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    source: str = field(default="method defaults", compare=False)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved values of every section (what ran), e.g. for MLflow params and hashes."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    def hash(self) -> str:
        """Stable short hash of the resolved settings, used to tag MLflow runs."""
        return digest(self.to_dict())

    def override(self, section: str, **values: Any) -> Settings:
        """These settings with ``section.key = value`` for every value that is not None (flags a
        user did not give are None), type-checked like the file."""
        given = {k: v for k, v in values.items() if v is not None}
        if not given:
            return self
        current = dataclasses.asdict(getattr(self, section))
        current.update(given)
        built = _build(section, current, origin="command line")
        return dataclasses.replace(self, **{section: built})

    def with_sets(self, assignments: list[str] | None) -> Settings:
        """Apply ``section.key=value`` strings (values parsed as YAML, like ``dvc exp run -S``)."""
        result = self
        for assignment in assignments or []:
            key, sep, raw = assignment.partition("=")
            section, dot, name = key.strip().partition(".")
            if not sep or not dot or not name:
                raise UserError(f"--set {assignment!r}: use section.key=value, e.g. --set train.epochs=3")
            if section not in SECTIONS:
                raise UserError(f"--set {assignment!r}: {_unknown(section, list(SECTIONS), 'section')}")
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as exc:
                raise UserError(f"--set {assignment!r}: the value is not valid YAML ({exc})") from exc
            current = dataclasses.asdict(getattr(result, section))
            if name not in current:
                raise UserError(f"--set {assignment!r}: {_unknown(f'{section}.{name}', _keys(section), 'key')}")
            current[name] = value
            result = dataclasses.replace(result, **{section: _build(section, current, origin="--set")})
        return result


def load_settings(path: Path | None = None) -> Settings:
    """Settings from ``path`` (or ./params.yaml when it exists; method defaults when it does not)."""
    target = path or DEFAULT_PARAMS
    if not target.exists():
        if path is not None:
            raise UserError(f"params file {target} does not exist: pass an existing file with --params")
        return Settings()
    try:
        raw = yaml.safe_load(target.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"params file {target} is not valid YAML ({exc}); fix the syntax and retry") from exc
    if not isinstance(raw, dict):
        raise UserError(f"params file {target} must hold a mapping of sections, got {type(raw).__name__}")
    sections: dict[str, Any] = {}
    for name, values in raw.items():
        if name not in SECTIONS:
            raise UserError(f"{target}: {_unknown(str(name), list(SECTIONS), 'section')}")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise UserError(f"{target}: section '{name}' must be a mapping of keys, got {type(values).__name__}")
        sections[name] = _build(name, values, origin=str(target))
    return Settings(**sections, source=str(target))


def digest(payload: Any) -> str:
    """Short stable hash of JSON-able data."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


# --- checking ------------------------------------------------------------------------------


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _keys(section: str) -> list[str]:
    return [f.name for f in fields(SECTIONS[section])]


def _unknown(name: str, known: list[str], what: str) -> str:
    if name in RENAMED:
        return f"{name} is no longer a setting: it was replaced by {RENAMED[name]}"
    short = name.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(short, [k.rsplit(".", 1)[-1] for k in known], n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"unknown {what} '{name}'{hint} (known: {', '.join(known)})"


def _build(section: str, values: dict[str, Any], origin: str) -> Any:
    """The section's dataclass from ``values``, every key and type checked."""
    cls = SECTIONS[section]
    hints = get_type_hints(cls)
    known = _keys(section)
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            raise UserError(f"{origin}: {_unknown(f'{section}.{key}', known, 'key')}")
        try:
            checked[key] = _coerce(value, hints[key])
        except TypeError as exc:
            raise UserError(f"{origin}: {section}.{key} must be {_describe(hints[key])}, got {value!r}") from exc
    built = cls(**checked)
    check = getattr(built, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as exc:
            raise UserError(f"{origin}: {exc}") from exc
    return built


YAML11_EXPONENT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)[eE][+-]?[0-9]+")
"""A number in exponent form that YAML 1.1 (PyYAML, DVC) loads as a string unless it has a dot."""


def _coerce(value: Any, tp: Any) -> Any:
    """``value`` as type ``tp`` (ints are accepted for floats; lists for tuples), else TypeError."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(value, option)
            except TypeError:
                continue
        raise TypeError(value)
    if origin is Literal:
        if value in get_args(tp) and not isinstance(value, bool):
            return value
        raise TypeError(value)
    if tp is type(None):
        if value is None:
            return None
        raise TypeError(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError(value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and YAML11_EXPONENT.fullmatch(value.strip()):
            return float(value)  # `lr: 1e-4`: YAML 1.1 reads an exponent without a dot as text
        raise TypeError(value)
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError(value)
        (item,) = {a for a in get_args(tp) if a is not Ellipsis}
        return tuple(_coerce(v, item) for v in value)
    raise TypeError(f"unsupported settings type {tp}")  # pragma: no cover - a programming error


def _describe(tp: Any) -> str:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is tuple:
        return "a list of numbers"
    return {type(None): "null", bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(
        tp, str(tp))


__all__ = ["SECTIONS", "Settings", "load_settings", "digest"]
