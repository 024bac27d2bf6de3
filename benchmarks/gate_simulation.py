"""Simulation: how the gate's rules behave over thousands of decisions, at the confusion-count level.

No images and no networks: each simulated gate is a set of patients with 22-40 slices whose lesions
span contiguous slices (per-patient lesion probabilities of `hemo synth`, lengths set so the slice
prevalences are ich .12, ivh .08, sah .12, sdh .17, edh .04), and each model is a per-class
sensitivity and false-alarm rate. Detection is clustered by patient (a per-patient, per-class
conspicuity and artefact level that every model sees, plus a smaller model-specific patient
effect), and two models decide a controlled share of the cells (70-95 %) from the same draw, their
identical decisions. A model's true micro- and per-class F2 come from its expected counts
(Gauss-Hermite quadrature over the patient effects), so every scenario knows the true gain it
simulates. All rules are hemo_model.metrics.gate_statistics' own kernels, batched over gates; the old rule
is the `hemo gate` rule before issue 18 (judge() of commit de64c50) vectorised: at that commit this
script ran judge() itself beside it and they agreed on 180 of 180 simulated gates (12, 17, 50
patients); judge() is retired since, the vectorised copy stays as the baseline.

Prints, with the command, the machine and the seed:
1. false promotion of an equal model at 12, 17, 50, 150 gate patients: the old rule (95 % percentile
   interval of the bootstrap gain above 0, mean gain >= 0.005, class drop <= 0.05, beats the
   all-positive model by 0.1) against the paired permutation test and the new superiority rule, with
   exact binomial 95 % intervals; and two weak nulls (equal micro-F2, not exchangeable);
2. non-inferiority at its margins (a challenger truly worse by the margin, overall or on one class):
   how often its lower bound clears the margin;
3. promotion rates for true gains 0 .. +0.05 in superiority and non-inferiority modes;
4. first models under the old rules 1-2 and the new class rules: a good model, one blind to EDH, one
   flagging every EDH slice, and a BCE-like one (the README's `loss bce` row, EDH never flagged);
5. 52 weekly retrains (equal or slightly worse) on one gate set under six policies: the champion's
   true drift below the reference, overall and per class, over many simulated years.

Run: `.venv/bin/python benchmarks/gate_simulation.py [--decisions 4000 --years 100 --seed 0 --jobs 2]`
(about a minute of wall time on 2 idle cores; --sections picks tables, --shared/--clustering change the
world).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
from numpy.polynomial.hermite_e import hermegauss
from scipy import special, stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hemo_model import CLASSES  # noqa: E402
from hemo_model.metrics import gate_statistics as gs  # noqa: E402

# --- the simulated world -----------------------------------------------------------------------------

PATIENT_PROBABILITY = np.array([0.35, 0.34, 0.29, 0.38, 0.12])
"""Per-patient probability of each lesion type (hemo_model.synth.LESION_PRIOR)."""
LESION_SLICES = np.array([[7, 14], [5, 10], [9, 17], [10, 18], [7, 14]])
"""Inclusive range of a lesion's labelled length in slices, set so that the slice prevalence is
ich .12, ivh .08, sah .12, sdh .17, edh .04 at 31 slices per patient on average."""
MIN_SLICES, MAX_SLICES = 22, 40
SIGMA_CONSPICUITY = 1.0  # per patient and class, shared by every model: some lesions are hard for all
SIGMA_MODEL = 0.5  # per patient, class and model: where two retrains differ
SIGMA_ARTEFACT = 1.0  # per patient and class, shared: patients whose negatives provoke false alarms
SIGMA_MODEL_FP = 0.5


@dataclass
class GateSets:
    """``sets`` simulated gates of ``patients`` patients each, padded to MAX_SLICES slices."""

    positive: np.ndarray  # (S, n, MAX_SLICES, C) bool
    valid: np.ndarray  # (S, n, MAX_SLICES, 1) bool: slice exists
    conspicuity: np.ndarray  # (S, n, C)
    artefact: np.ndarray  # (S, n, C)
    latent: np.ndarray  # (S, n, MAX_SLICES, C) float32: the common draw shared decisions come from
    positives: np.ndarray  # (S, n, C): positive slices per patient and class

    def take(self, rows: np.ndarray) -> GateSets:
        """The gates at ``rows`` (a boolean mask or indices over the first axis)."""
        return GateSets(self.positive[rows], self.valid[rows], self.conspicuity[rows], self.artefact[rows],
                        self.latent[rows], self.positives[rows])

    @cached_property
    def trivial(self) -> np.ndarray:
        """The all-positive model's counts (S, n, C, 3)."""
        negatives = self.valid.sum(axis=2) - self.positives
        return np.stack([self.positives, negatives, np.zeros_like(self.positives)], axis=-1).astype(np.float64)


def draw_gate_sets(rng: np.random.Generator, sets: int, patients: int) -> GateSets:
    shape = (sets, patients, len(CLASSES))
    slices = rng.integers(MIN_SLICES, MAX_SLICES + 1, size=(sets, patients))
    has = rng.random(shape) < PATIENT_PROBABILITY
    length = rng.integers(LESION_SLICES[:, 0], LESION_SLICES[:, 1] + 1, size=shape)
    start = np.floor(rng.random(shape) * (slices[..., None] - length + 1)).astype(np.int64)
    k = np.arange(MAX_SLICES)[None, None, :, None]
    positive = has[:, :, None, :] & (k >= start[:, :, None, :]) & (k < (start + length)[:, :, None, :])
    valid = (k < slices[:, :, None, None])
    return GateSets(positive, valid, rng.normal(0, SIGMA_CONSPICUITY, shape), rng.normal(0, SIGMA_ARTEFACT, shape),
                    rng.random(positive.shape, dtype=np.float32), np.count_nonzero(positive, axis=2))


@dataclass(frozen=True)
class Model:
    """Per-class logit sensitivity and logit false-positive rate of a median patient; any leading
    shape (one model per simulated gate)."""

    sensitivity: np.ndarray  # (..., C)
    false_positive: np.ndarray  # (..., C)

    def shifted(self, t: np.ndarray | float, classes: np.ndarray | None = None, sensitivity: float = 1.0,
                false_positive: float = -1.0) -> Model:
        """Better by ``t`` logits (worse when negative) on ``classes`` (mask, default all)."""
        mask = np.ones(len(CLASSES)) if classes is None else np.asarray(classes, dtype=np.float64)
        t = np.asarray(t, dtype=np.float64)[..., None] * mask
        return Model(self.sensitivity + sensitivity * t, self.false_positive + false_positive * t)


@dataclass
class Noise:
    """A model's own randomness on a set of gates, drawn once so that scenarios which differ only in
    the model's quality share it (common random numbers)."""

    patient: np.ndarray  # (S, n, C): the model's own patient effect on sensitivity
    patient_fp: np.ndarray  # (S, n, C): ... and on false alarms
    uniform: np.ndarray  # (S, n, MAX_SLICES, C) float32: each cell's draw (2.0 on padding: never flagged)

    def take(self, rows: np.ndarray) -> Noise:
        return Noise(self.patient[rows], self.patient_fp[rows], self.uniform[rows])


def draw_noise(rng: np.random.Generator, gates: GateSets, shared: np.ndarray) -> Noise:
    """A cell takes the gate's common latent draw with probability sqrt(shared), else its own, so two
    models decide a share ``shared`` of cells from the same draw (and agree on them)."""
    shape = gates.conspicuity.shape
    q = np.sqrt(np.asarray(shared, dtype=np.float32)).reshape(-1, 1, 1, 1)
    r = rng.random(gates.latent.shape, dtype=np.float32)
    uniform = np.where(r < q, gates.latent, (r - q) / np.maximum(1 - q, np.float32(1e-6)))
    uniform[~np.broadcast_to(gates.valid, uniform.shape)] = 2.0
    return Noise(rng.normal(0, SIGMA_MODEL, shape), rng.normal(0, SIGMA_MODEL_FP, shape), uniform)


def model_counts(gates: GateSets, model: Model, noise: Noise) -> np.ndarray:
    """(S, n, C, 3) counts of ``model`` on the gates: a cell is flagged when its draw falls below the
    model's probability for that patient and class (sensitivity on positives, false-alarm rate on
    negatives)."""
    sens = np.asarray(model.sensitivity, dtype=np.float64)
    fpr = np.asarray(model.false_positive, dtype=np.float64)
    if sens.ndim == 2:
        sens, fpr = sens[:, None, :], fpr[:, None, :]
    p_pos = special.expit(sens + gates.conspicuity + noise.patient).astype(np.float32)
    p_neg = special.expit(fpr + gates.artefact + noise.patient_fp).astype(np.float32)
    flag = noise.uniform < np.where(gates.positive, p_pos[:, :, None, :], p_neg[:, :, None, :])
    tp = np.count_nonzero(flag & gates.positive, axis=2)
    fp = np.count_nonzero(flag, axis=2) - tp
    fn = gates.positives - tp
    return np.stack([tp, fp, fn], axis=-1).astype(np.float64)


_NODES, _WEIGHTS = hermegauss(24)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()
EXPECTED_POSITIVES = PATIENT_PROBABILITY * LESION_SLICES.mean(axis=1)
EXPECTED_NEGATIVES = (MIN_SLICES + MAX_SLICES) / 2 - EXPECTED_POSITIVES


def _mean_expit(logit: np.ndarray, sigma: float) -> np.ndarray:
    return (special.expit(np.asarray(logit)[..., None] + sigma * _NODES) * _WEIGHTS).sum(axis=-1)


def expected_counts(model: Model) -> np.ndarray:
    """Expected [tp, fp, fn] per patient and class (..., C, 3): the population the gate samples."""
    sens = _mean_expit(model.sensitivity, float(np.hypot(SIGMA_CONSPICUITY, SIGMA_MODEL)))
    fpr = _mean_expit(model.false_positive, float(np.hypot(SIGMA_ARTEFACT, SIGMA_MODEL_FP)))
    return np.stack([EXPECTED_POSITIVES * sens, EXPECTED_NEGATIVES * fpr, EXPECTED_POSITIVES * (1 - sens)], axis=-1)


def true_f2(model: Model) -> np.ndarray:
    """True micro-F2 and per-class F2 (..., 1 + C)."""
    counts = expected_counts(model)
    return np.concatenate([gs.f2(counts.sum(axis=-2))[..., None], gs.f2(counts)], axis=-1)


def solve_shift(model: Model, target: float | np.ndarray, column: int = 0, **how: object) -> np.ndarray:
    """Logit shift t (per model) whose ``shifted(t, **how)`` changes true F2 column ``column``
    (0 micro, 1 + k class k) by ``target``: bisection, vectorised over models."""
    base = true_f2(model)[..., column]
    low = np.full(base.shape, -8.0)
    high = np.full(base.shape, 8.0)
    for _ in range(36):  # 16 / 2**36: far below any figure printed
        mid = (low + high) / 2
        change = true_f2(model.shifted(mid, **how))[..., column] - base
        too_high = change > target
        high = np.where(too_high, mid, high)
        low = np.where(too_high, low, mid)
    return (low + high) / 2


def draw_models(rng: np.random.Generator, sets: int) -> Model:
    """Base models of decent quality, one per gate (the quality varies between gates)."""
    shape = (sets, len(CLASSES))
    return Model(special.logit(rng.uniform(0.70, 0.93, shape)), special.logit(rng.uniform(0.005, 0.04, shape)))


SHARED = (0.70, 0.95)
"""Range of the share of cells two models decide from the same draw (per simulated gate)."""


def draw_shared(rng: np.random.Generator, sets: int) -> np.ndarray:
    return rng.uniform(SHARED[0], SHARED[1], sets)


def set_world(shared: tuple[float, float], clustering: float) -> None:
    """Change the simulated world (before any worker starts): the range of identical decisions and a
    scale on every patient effect."""
    global SHARED, SIGMA_CONSPICUITY, SIGMA_MODEL, SIGMA_ARTEFACT, SIGMA_MODEL_FP
    SHARED = shared
    SIGMA_CONSPICUITY, SIGMA_MODEL = 1.0 * clustering, 0.5 * clustering
    SIGMA_ARTEFACT, SIGMA_MODEL_FP = 1.0 * clustering, 0.5 * clustering


def one_hot(k: int) -> np.ndarray:
    mask = np.zeros(len(CLASSES))
    mask[k] = 1.0
    return mask


def broadcast(model: Model, sets: int) -> Model:
    return Model(np.broadcast_to(model.sensitivity, (sets, len(CLASSES))).copy(),
                 np.broadcast_to(model.false_positive, (sets, len(CLASSES))).copy())


def equal_f2_other_operating_point(model: Model, logits: float = 0.6) -> Model:
    """Same true micro-F2, another trade-off: more sensitive by ``logits``, more false alarms."""
    more = model.shifted(logits, false_positive=0.0)
    target = true_f2(model)[..., 0] - true_f2(more)[..., 0]
    return more.shifted(solve_shift(more, target, sensitivity=0.0), sensitivity=0.0)


def equal_f2_class_trade(model: Model, k_down: int = 4, k_up: int = 3, drop: float = 0.08) -> Model:
    """Same true micro-F2, another class mix: class ``k_down`` (EDH) worse by ``drop``, ``k_up`` (SDH) better."""
    down = model.shifted(solve_shift(model, -drop, column=1 + k_down, classes=one_hot(k_down)), classes=one_hot(k_down))
    target = true_f2(model)[..., 0] - true_f2(down)[..., 0]
    return down.shifted(solve_shift(down, target, classes=one_hot(k_up)), classes=one_hot(k_up))


# --- the rules, vectorised over gates ------------------------------------------------------------------


def old_rule(challenger: np.ndarray, champion: np.ndarray, trivial: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The retired gate rule (judge() of commit de64c50), vectorised: percentile 95 % interval of the paired
    bootstrap micro-F2 gain above 0, its *mean* >= 0.005, no class F2 drop > 0.05, micro-F2 >= all-positive
    + 0.1 (class floor 0.0 always passes). ``weights``: judge's one bootstrap draw (seed 0)."""
    a, b = gs.micro(challenger), gs.micro(champion)
    gains = gs.f2(gs._weighted_sums(weights, a)) - gs.f2(gs._weighted_sums(weights, b))
    low = quantile(gains, 0.025)
    judged = gs.positive_patients(challenger) > 0
    drops = np.where(judged, gs.class_f2(champion) - gs.class_f2(challenger), -np.inf)
    trivial_ok = gs.micro_f2(challenger) - gs.micro_f2(trivial) >= 0.1
    return (low > 0) & (gains.mean(axis=-1) >= 0.005) & (drops <= 0.05).all(axis=-1) & trivial_ok


def quantile(samples: np.ndarray, q: float) -> np.ndarray:
    """np.quantile(samples, q, axis=-1) (linear interpolation) by partial sorting: same numbers, faster."""
    position = q * (samples.shape[-1] - 1)
    low = int(np.floor(position))
    high = min(low + 1, samples.shape[-1] - 1)
    part = np.partition(samples, [low, high], axis=-1)
    return part[..., low] + (position - low) * (part[..., high] - part[..., low])


def new_absolute(challenger: np.ndarray, trivial: np.ndarray, policy: gs.GatePolicy) -> np.ndarray:
    checks = gs.class_checks(challenger, trivial, policy.class_margin_over_trivial, policy.class_recall_floor,
                             policy.exam_sensitivity_floor)
    return (checks.passed & (gs.micro_f2(challenger) - gs.micro_f2(trivial) >= policy.margin_over_trivial)
            & gs.gate_size_ok(challenger, policy.min_patients, policy.min_positive_patients))


def superiority(challenger: np.ndarray, champion: np.ndarray, policy: gs.GatePolicy, seed: int,
                alpha: float | None = None) -> dict[str, np.ndarray]:
    """The permutation test alone, the full superiority rule (test, observed gain >= min_improvement,
    class drop), and the rule without min_improvement."""
    test = gs.permutation_test(challenger, champion, policy.permutations, policy.exact_up_to, seed)
    significant = test.p_value <= (policy.alpha if alpha is None else alpha)
    judged = gs.positive_patients(challenger) > 0
    drops = np.where(judged, gs.class_f2(champion) - gs.class_f2(challenger), -np.inf)
    class_ok = (drops <= policy.max_class_drop + 1e-12).all(axis=-1)
    return {"test": significant, "rule": significant & (test.gain >= policy.min_improvement - 1e-12) & class_ok,
            "rule without min_improvement": significant & (test.gain > 0) & class_ok}


# --- reporting ---------------------------------------------------------------------------------------------


def rate(hits: np.ndarray) -> str:
    """'2.31 % [1.87, 2.82]' with the exact (Clopper-Pearson) binomial 95 % interval."""
    hits = np.asarray(hits, dtype=bool).ravel()
    k, n = int(hits.sum()), hits.size
    ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    return f"{100 * k / n:5.2f} % [{100 * ci.low:4.2f}, {100 * ci.high:5.2f}]"


def pct(hits: np.ndarray) -> str:
    return f"{100 * np.asarray(hits, dtype=float).mean():5.1f} %"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), cpu)
    except OSError:
        pass
    import scipy

    return (f"machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}, "
            f"scipy {scipy.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")


# --- 1-3: one gate size, every paired scenario (common random numbers across scenarios) -------------------

GAINS = (0.005, 0.01, 0.02, 0.05)


def paired_scenarios(base: Model, policy: gs.GatePolicy) -> dict[str, Model]:
    """Challengers against the champion ``base``: true gains, the weak nulls, the NI boundaries."""
    scenarios = {"operating point": equal_f2_other_operating_point(base),
                 "class trade": equal_f2_class_trade(base)}
    for gain in GAINS:
        scenarios[f"{gain:+.3f}"] = base.shifted(solve_shift(base, gain))
    margin, class_margin = policy.ni_margin, policy.ni_class_margin
    scenarios["micro -margin"] = base.shifted(solve_shift(base, -margin))
    scenarios["micro -margin (sensitivity)"] = base.shifted(solve_shift(base, -margin, false_positive=0.0),
                                                            false_positive=0.0)
    scenarios["micro -margin (false alarms)"] = base.shifted(solve_shift(base, -margin, sensitivity=0.0),
                                                             sensitivity=0.0)
    for k, name in enumerate(CLASSES):
        t = solve_shift(base, -class_margin, column=1 + k, classes=one_hot(k), false_positive=0.0)
        scenarios[f"{name} -margin (sensitivity)"] = base.shifted(t, classes=one_hot(k), false_positive=0.0)
    for k in (3, 4):
        t = solve_shift(base, -class_margin, column=1 + k, classes=one_hot(k), sensitivity=0.0)
        scenarios[f"{CLASSES[k]} -margin (false alarms)"] = base.shifted(t, classes=one_hot(k), sensitivity=0.0)
    return scenarios


_MODELS: dict[tuple[int, int, int, gs.GatePolicy], tuple[Model, dict[str, Model]]] = {}


def chunk_models(seed: int, index: int, chunk: int, policy: gs.GatePolicy) -> tuple[Model, dict[str, Model]]:
    """The base models of one chunk and their scenarios: the same at every gate size (so the tables
    differ by size only), computed once."""
    key = (seed, index, chunk, policy)
    if key not in _MODELS:
        base = draw_models(np.random.default_rng([seed, index, 1]), chunk)
        _MODELS[key] = (base, paired_scenarios(base, policy) if index % 2 == 0 else {})
    return _MODELS[key]


def simulate_size(patients: int, decisions: int, seed: int, policy: gs.GatePolicy, power_permutations: int,
                  chunk: int = 250) -> dict:
    """Every paired scenario at one gate size: the equal pair on ``decisions`` gates, the
    non-inferiority boundaries on half as many, the true gains and weak nulls on a quarter (their
    superiority decisions with ``power_permutations`` swaps: the p-value is exact at any count)."""
    rng = np.random.default_rng([seed, patients])
    weights = gs.bootstrap_weights(patients, 2000, 0)  # judge() draws once, with gate.seed 0
    power_policy = replace(policy, permutations=power_permutations)
    unsized = replace(policy, min_patients=0, min_positive_patients=0)  # the class rules alone (size signed off)
    out: dict[str, dict[str, list[np.ndarray]]] = {}

    def record(scenario: str, key: str, hits: np.ndarray) -> None:
        out.setdefault(scenario, {}).setdefault(key, []).append(np.asarray(hits, dtype=bool))

    agreement = []
    for index in range(max(1, decisions // chunk)):
        gates = draw_gate_sets(rng, chunk, patients)
        base, scenarios = chunk_models(seed, index, chunk, policy)
        shared = draw_shared(rng, chunk)
        noise_a, noise_b = draw_noise(rng, gates, shared), draw_noise(rng, gates, shared)
        champion = model_counts(gates, base, noise_b)
        challengers = {"equal": base} | {name: model for name, model in scenarios.items()
                                         if ("margin" in name and index % 2 == 0) or index % 4 == 0}
        for name, model in challengers.items():
            counts = model_counts(gates, model, noise_a)
            if name == "equal":
                agreement.append(identical_share(gates, base, noise_a, noise_b))
                record(name, "absolute", new_absolute(counts, gates.trivial, unsized))
                record(name, "size", gs.gate_size_ok(counts, policy.min_patients, policy.min_positive_patients))
            if "margin" not in name:
                record(name, "old", old_rule(counts, champion, gates.trivial, weights))
                test = superiority(counts, champion, policy if name == "equal" else power_policy, seed=index)
                record(name, "test", test["test"])
                record(name, "superiority", test["rule"])
                record(name, "superiority, min_improvement 0", test["rule without min_improvement"])
            ok = bounds_ok(counts, champion, policy.ni_margin, policy.ni_class_margin, policy)
            record(name, "ni", ok.all(axis=-1))
            for column, label in enumerate(["micro", *CLASSES]):
                record(name, f"bound {label}", ok[:, column])
    return {"patients": patients, "agreement": float(np.mean(agreement)),
            "hits": {s: {k: np.concatenate(v) for k, v in d.items()} for s, d in out.items()}}


def bounds_ok(challenger: np.ndarray, other: np.ndarray, margin: float, class_margin: float,
              policy: gs.GatePolicy) -> np.ndarray:
    """(..., 1 + C): each lower bound above its -margin (a class that cannot be bounded fails)."""
    bounds = gs.gain_bounds(challenger, other, policy.bound_alpha, policy.min_positive_patients)
    limits = np.array([margin] + [class_margin] * len(CLASSES))
    return np.nan_to_num(bounds.lower, nan=-np.inf) > -limits


def identical_share(gates: GateSets, model: Model, noise_a: Noise, noise_b: Noise) -> float:
    """Share of identical decisions between two draws of ``model``, over the cells that matter
    (positive, or flagged by either model)."""
    def flags(noise: Noise) -> np.ndarray:
        p_pos = special.expit(model.sensitivity[:, None, :] + gates.conspicuity + noise.patient)
        p_neg = special.expit(model.false_positive[:, None, :] + gates.artefact + noise.patient_fp)
        return noise.uniform < np.where(gates.positive, p_pos[:, :, None, :], p_neg[:, :, None, :])

    a, b = flags(noise_a), flags(noise_b)
    relevant = gates.positive | a | b
    return float((a == b)[relevant].mean())


# --- 4: the class rules on first models --------------------------------------------------------------------


def first_models(base: Model) -> dict[str, Model]:
    """A good model, one blind to EDH (never flags it), one that flags every EDH slice, and a BCE-like
    model (the README's `loss bce` ablation row: class F2 about .385 .752 .622 .543 and EDH never flagged)."""
    never, always = -40.0, 40.0
    blind = Model(base.sensitivity.copy(), base.false_positive.copy())
    blind.sensitivity[..., 4], blind.false_positive[..., 4] = never, never
    everything = Model(base.sensitivity.copy(), base.false_positive.copy())
    everything.sensitivity[..., 4], everything.false_positive[..., 4] = always, always
    bce = Model(base.sensitivity.copy(), base.false_positive.copy())
    for k, target in enumerate((0.385, 0.752, 0.622, 0.543)):
        change = target - true_f2(bce)[..., 1 + k]
        bce = bce.shifted(solve_shift(bce, change, column=1 + k, classes=one_hot(k), false_positive=0.0),
                          classes=one_hot(k), false_positive=0.0)
    bce.sensitivity[..., 4], bce.false_positive[..., 4] = never, never
    return {"good": base, "EDH-blind": blind, "EDH all-positive": everything, "BCE-like": bce}


def old_first_model(counts: np.ndarray, trivial: np.ndarray) -> np.ndarray:
    """judge() for a first model: micro-F2 >= all-positive + 0.1 and every class with positives F2 >= 0.0."""
    return gs.micro_f2(counts) - gs.micro_f2(trivial) >= 0.1


def simulate_first_models(patients: int, gates_count: int, seed: int, policy: gs.GatePolicy) -> dict:
    rng = np.random.default_rng([seed, patients, 4])
    gates = draw_gate_sets(rng, gates_count, patients)
    base = draw_models(rng, gates_count)
    noise = draw_noise(rng, gates, draw_shared(rng, gates_count))
    result = {}
    for name, model in first_models(base).items():
        counts = model_counts(gates, model, noise)
        absolute = new_absolute(counts, gates.trivial, replace(policy, min_patients=0, min_positive_patients=0))
        checks = gs.class_checks(counts, gates.trivial, policy.class_margin_over_trivial, policy.class_recall_floor,
                                 policy.exam_sensitivity_floor)
        result[name] = {"old": old_first_model(counts, gates.trivial), "rules": absolute,
                        "margin": checks.beats_trivial.all(axis=-1), "recall": checks.recall_ok.all(axis=-1),
                        "exam": checks.exam_ok,
                        "default": absolute & gs.gate_size_ok(counts, policy.min_patients,
                                                              policy.min_positive_patients),
                        "micro": gs.micro_f2(counts), "edh_judged": gs.positive_patients(counts)[:, 4] > 0}
    return result


# --- 5: a year of weekly retrains on one gate set -------------------------------------------------------------

POLICIES = ("(a) old rule", "(b) superiority", "(b') superiority, alpha spent", "(b'') superiority + budget",
            "(c) NI, no reference", "(d) NI + reference budget")


def calibrate_steps(worse_micro: float, worse_class: float) -> tuple[float, float]:
    """Logit steps of a 'slightly worse' retrain of a typical model: micro-F2 -worse_micro (every class
    alike), one class's F2 -worse_class (its sensitivity)."""
    typical = Model(special.logit(np.full((1, len(CLASSES)), 0.815)), special.logit(np.full((1, len(CLASSES)), 0.0225)))
    overall = float(solve_shift(typical, -worse_micro)[0])
    one_class = float(np.mean([solve_shift(typical, -worse_class, column=1 + k, classes=one_hot(k),
                                           false_positive=0.0)[0] for k in range(len(CLASSES))]))
    return overall, one_class


YEAR_PART = 25
"""Simulated years per task (the parts run in parallel and are merged)."""


def merge_years(parts: list[dict]) -> dict:
    merged = dict(parts[0], years=sum(p["years"] for p in parts))
    merged["policies"] = {name: {key: np.concatenate([p["policies"][name][key] for p in parts])
                                 for key in parts[0]["policies"][name]} for name in parts[0]["policies"]}
    return merged


def simulate_year(years: int, patients: int, weeks: int, seed: int, policy: gs.GatePolicy,
                  permutations: int, worse_micro: float, worse_class: float, part: int = 0) -> dict:
    """Each simulated year: one gate set; the reference (and first champion) is a decent model; every week
    a retrain of the current champion that is equal (1/2), slightly worse overall (1/4) or slightly worse
    on one random class (1/4); each policy keeps its own champion."""
    rng = np.random.default_rng([seed, patients, 5, part])
    overall_step, class_step = calibrate_steps(worse_micro, worse_class)
    gates = draw_gate_sets(rng, years, patients)
    shared = draw_shared(rng, years)
    reference = draw_models(rng, years)
    reference_counts = model_counts(gates, reference, draw_noise(rng, gates, shared))
    weights = gs.bootstrap_weights(patients, 2000, 0)
    fast = replace(policy, permutations=permutations)
    state = {name: {"model": reference, "counts": reference_counts, "promotions": np.zeros(years, int),
                    "worst": np.zeros((years, 1 + len(CLASSES)))} for name in POLICIES}
    reference_f2 = true_f2(reference)
    for week in range(1, weeks + 1):
        noise = draw_noise(rng, gates, shared)
        kind = rng.choice(3, size=years, p=[0.5, 0.25, 0.25])
        which_class = one_hot_rows(rng.integers(0, len(CLASSES), years))
        step_all = np.where(kind == 1, overall_step, 0.0)[:, None]
        step_class = np.where(kind == 2, class_step, 0.0)[:, None] * which_class

        def retrain(champion: Model, step_all: np.ndarray = step_all, step_class: np.ndarray = step_class) -> Model:
            return Model(champion.sensitivity + step_all + step_class, champion.false_positive - step_all)

        from_reference = model_counts(gates, retrain(reference), noise)  # every champion that never moved
        unmoved = week_statistics(from_reference, reference_counts, reference_counts, gates.trivial, fast, weights,
                                  week)
        for name, st in state.items():
            champion, moved = st["model"], st["promotions"] > 0
            challenger = retrain(champion)
            counts, statistics = from_reference.copy(), dict(unmoved)
            if moved.any():
                subset = Model(challenger.sensitivity[moved], challenger.false_positive[moved])
                counts[moved] = model_counts(gates.take(moved), subset, noise.take(moved))
                fresh = week_statistics(counts[moved], st["counts"][moved], reference_counts[moved],
                                        gates.trivial[moved], fast, weights, week, old=name.startswith("(a)"))
                statistics = {key: _merge(value, fresh[key], moved) for key, value in unmoved.items()}
            promote = decide_week(name, statistics, fast, week)
            st["model"] = Model(np.where(promote[:, None], challenger.sensitivity, champion.sensitivity),
                                np.where(promote[:, None], challenger.false_positive, champion.false_positive))
            st["counts"] = np.where(promote[:, None, None, None], counts, st["counts"])
            st["promotions"] += promote
            st["worst"] = np.minimum(st["worst"], true_f2(st["model"]) - reference_f2)
    return {"years": years, "patients": patients, "weeks": weeks,
            "steps": (overall_step, class_step, worse_micro, worse_class),
            "policies": {name: {"drift": true_f2(st["model"]) - reference_f2, "worst": st["worst"],
                                "promotions": st["promotions"]} for name, st in state.items()}}


def one_hot_rows(indices: np.ndarray) -> np.ndarray:
    rows = np.zeros((len(indices), len(CLASSES)))
    rows[np.arange(len(indices)), indices] = 1.0
    return rows


def _merge(everywhere: np.ndarray, subset: np.ndarray, rows: np.ndarray) -> np.ndarray:
    merged = everywhere.copy()
    merged[rows] = subset
    return merged


def week_statistics(counts: np.ndarray, champion: np.ndarray, reference: np.ndarray, trivial: np.ndarray,
                    policy: gs.GatePolicy, weights: np.ndarray, week: int, old: bool = True) -> dict[str, np.ndarray]:
    """Everything the six policies decide from, for challengers ``counts`` against ``champion`` and
    ``reference`` (computed once for every year whose champion never moved)."""
    absolute = new_absolute(counts, trivial, policy)
    gain = gs.micro_f2(counts) - gs.micro_f2(champion)
    judged = gs.positive_patients(counts) > 0
    drops = np.where(judged, gs.class_f2(champion) - gs.class_f2(counts), -np.inf)
    class_ok = (drops <= policy.max_class_drop + 1e-12).all(axis=-1)
    p_value = np.ones(len(counts))
    candidate = absolute & class_ok & (gain > 0)  # the test only where it can change the outcome
    if candidate.any():
        p_value[candidate] = gs.permutation_test(counts[candidate], champion[candidate], policy.permutations,
                                                 policy.exact_up_to, seed=week).p_value
    to_reference = gs.gain_bounds(counts, reference, policy.bound_alpha, policy.min_positive_patients).lower
    to_champion = to_reference if champion is reference else gs.gain_bounds(
        counts, champion, policy.bound_alpha, policy.min_positive_patients).lower
    return {"absolute": absolute, "gain": gain, "class_ok": class_ok, "p_value": p_value,
            "to_champion": np.nan_to_num(to_champion, nan=-np.inf),
            "to_reference": np.nan_to_num(to_reference, nan=-np.inf),
            "old": old_rule(counts, champion, trivial, weights) if old else np.zeros(len(counts), dtype=bool)}


def decide_week(name: str, statistics: dict[str, np.ndarray], policy: gs.GatePolicy, week: int) -> np.ndarray:
    """One policy's decision, from week_statistics()."""
    if name.startswith("(a)"):
        return statistics["old"]
    limits = np.array([policy.drift_budget] + [policy.drift_class_budget] * len(CLASSES))
    within_budget = (statistics["to_reference"] > -limits).all(axis=-1)
    if name.startswith("(b"):
        alpha = gs.alpha_for_decision(policy.alpha, week) if "spent" in name else policy.alpha
        promote = (statistics["absolute"] & statistics["class_ok"] & (statistics["p_value"] <= alpha)
                   & (statistics["gain"] >= policy.min_improvement - 1e-12))
        return promote & within_budget if "budget" in name else promote
    margins = np.array([policy.ni_margin] + [policy.ni_class_margin] * len(CLASSES))
    promote = statistics["absolute"] & (statistics["to_champion"] > -margins).all(axis=-1)
    return promote & within_budget if "budget" in name else promote


# --- main ---------------------------------------------------------------------------------------------------


def run_task(task: tuple) -> tuple[tuple, dict, float]:
    started = time.perf_counter()
    kind, args = task[0], task[1:]
    result = {"size": simulate_size, "first": simulate_first_models, "year": simulate_year}[kind](*args)
    return task, result, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decisions", type=int, default=4000, help="equal-model gates per size (others: half)")
    parser.add_argument("--sizes", default="12,17,50,150", help="gate patients")
    parser.add_argument("--first-gates", type=int, default=2000, help="gates per size for the first-model table")
    parser.add_argument("--years", type=int, default=100, help="simulated years of weekly retrains")
    parser.add_argument("--weeks", type=int, default=52)
    parser.add_argument("--year-patients", type=int, default=300,
                        help="gate patients in the weekly scenario (non-inferiority needs a large gate to promote)")
    parser.add_argument("--year-permutations", type=int, default=1000,
                        help="swaps per superiority decision in the weekly scenario (exact p-values at any count)")
    parser.add_argument("--power-permutations", type=int, default=1000,
                        help="swaps per superiority decision in the power and weak-null rows")
    parser.add_argument("--worse-micro", type=float, default=0.01,
                        help="weekly scenario: true micro-F2 loss of a retrain that is worse overall")
    parser.add_argument("--worse-class", type=float, default=0.05,
                        help="weekly scenario: true F2 loss of a retrain that is worse on one class")
    parser.add_argument("--shared", default="0.70,0.95",
                        help="range of the share of identical decisions between two models (the issue's 70-95 %%)")
    parser.add_argument("--clustering", type=float, default=1.0,
                        help="scale of every patient effect (0: cells independent given the model; "
                             "2: twice as clustered)")
    parser.add_argument("--sections", default="1,2,3,4,5", help="which tables to compute and print")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    set_world(tuple(float(x) for x in args.shared.split(",")), args.clustering)
    sections = {int(x) for x in args.sections.split(",")}
    policy = gs.GatePolicy()
    sizes = [int(s) for s in args.sizes.split(",")]
    started = time.perf_counter()
    print(f"$ {Path(sys.executable).name} benchmarks/gate_simulation.py {' '.join(sys.argv[1:])}".rstrip())
    print(machine())
    print(f"seed {args.seed}; {args.decisions} equal-model gates per size ({args.decisions // 2} per other scenario), "
          f"{args.first_gates} first-model gates per size, {args.years} simulated years of {args.weeks} weeks at "
          f"{args.year_patients} gate patients; world: identical decisions {args.shared}, "
          f"clustering x{args.clustering}")
    print(f"policy: {policy}")
    parts = [min(YEAR_PART, args.years - start) for start in range(0, args.years, YEAR_PART)]
    tasks = [("year", years, args.year_patients, args.weeks, args.seed, policy, args.year_permutations,
              args.worse_micro, args.worse_class, part) for part, years in enumerate(parts)] if 5 in sections else []
    if sections & {1, 2, 3}:
        tasks += [("size", n, args.decisions, args.seed, policy, args.power_permutations)
                  for n in sorted(sizes, reverse=True)]
    if 4 in sections:
        tasks += [("first", n, args.first_gates, args.seed, policy) for n in sizes]
    results: dict[tuple, dict] = {}
    timings: dict[tuple, float] = {}
    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("fork")) as pool:
            finished = list(pool.map(run_task, tasks))
    else:
        finished = [run_task(task) for task in tasks]
    for task, result, seconds in finished:
        key = ("year", task[-1]) if task[0] == "year" else task[:2]
        results[key], timings[key] = result, seconds
    by_size = {n: results[("size", n)] for n in sizes if ("size", n) in results}
    print_world(by_size, args.seed)
    if 1 in sections:
        print_false_promotion(by_size, policy)
    if 2 in sections:
        print_noninferiority(by_size, policy)
    if 3 in sections:
        print_power(by_size, policy)
    if 4 in sections:
        print_first_models({n: results[("first", n)] for n in sizes}, policy)
    if 5 in sections:
        print_year(merge_years([results[("year", part)] for part in range(len(parts))]), policy)
    usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)
    print(f"\ntotal {time.perf_counter() - started:.1f} s wall, {cpu:.1f} s CPU ({args.jobs} processes; task seconds: "
          + ", ".join(f"{k[0]} {k[1]}: {v:.1f}" for k, v in timings.items()) + ")")


def print_world(by_size: dict[int, dict], seed: int) -> None:
    rng = np.random.default_rng([seed, 99])
    gates = draw_gate_sets(rng, 400, 150)
    prevalence = gates.positive.sum(axis=(0, 1, 2)) / gates.valid.sum()
    with_class = gates.positive.any(axis=2).mean(axis=(0, 1))
    models = draw_models(rng, 4000)
    truth = true_f2(models)
    low, high = np.percentile(truth, [5, 95], axis=0)
    print("\nThe simulated world")
    print("  slice prevalence " + ", ".join(f"{c} {p:.3f}" for c, p in zip(CLASSES, prevalence, strict=True))
          + "; patients with the class " + ", ".join(f"{c} {p:.2f}" for c, p in zip(CLASSES, with_class, strict=True))
          + f"; any bleed {gates.positive.any(axis=(2, 3)).mean():.2f}")
    baseline = gs.f2(gates.trivial.sum(axis=(0, 1)))
    print("  all-positive F2 per class " + ", ".join(f"{c} {f:.3f}" for c, f in zip(CLASSES, baseline, strict=True))
          + f", micro {gs.f2(gates.trivial.sum(axis=(0, 1, 2))):.3f}")
    print(f"  models (true F2, 5-95 % over models): micro {low[0]:.3f}-{high[0]:.3f}; "
          + ", ".join(f"{c} {lo:.2f}-{hi:.2f}" for c, lo, hi in zip(CLASSES, low[1:], high[1:], strict=True)))
    if by_size:
        print("  identical decisions of two equal retrains (cells positive or flagged by either): "
              + ", ".join(f"{n} patients {r['agreement']:.1%}" for n, r in by_size.items()))


def print_false_promotion(by_size: dict[int, dict], policy: gs.GatePolicy) -> None:
    print(f"\n1. False promotion of an equal model (target <= 5 %; one-sided level {policy.alpha}), exact binomial "
          "95 % intervals")
    print(f"  {'gate patients':>13} | {'gates':>5} | {'old rule (judge)':>24} | {'new: permutation test':>24} | "
          f"{'new: superiority rule':>24} | good model passes the class rules | gate size ok")
    for n, r in by_size.items():
        h = r["hits"]["equal"]
        print(f"  {n:>13} | {h['old'].size:>5} | {rate(h['old']):>24} | {rate(h['test']):>24} | "
              f"{rate(h['superiority']):>24} | {pct(h['absolute']):>33} | {pct(h['size']):>12}")
    print("  weak null (same true micro-F2, not exchangeable): new test + class drop | old rule")
    for scenario, what in (("operating point", "more sensitive, more false alarms"),
                           ("class trade", "EDH F2 -0.08, SDH better")):
        print(f"  {scenario} ({what}): " + "; ".join(
            f"{n}: {rate(r['hits'][scenario]['superiority'])} | {pct(r['hits'][scenario]['old'])}"
            for n, r in by_size.items()))


def print_noninferiority(by_size: dict[int, dict], policy: gs.GatePolicy) -> None:
    print(f"\n2. Non-inferiority at its margins (micro {policy.ni_margin}, class {policy.ni_class_margin}; "
          f"jackknife-t bounds at nominal {policy.bound_alpha}): share of gates whose bound clears a model exactly "
          f"at the margin (target <= {policy.alpha})")
    print("  " + f"{'challenger (true change)':<36}" + "".join(f" | {n:>3} patients: rate [95 %]" for n in by_size))
    for scenario in [s for s in next(iter(by_size.values()))["hits"] if "margin" in s]:
        column = "micro" if scenario.startswith("micro") else scenario.split()[0]
        print("  " + f"{scenario:<36}" + "".join(f" | {rate(r['hits'][scenario][f'bound {column}']):>24}"
                                                for r in by_size.values()))
    print("  the drift budget uses the same bounds (margins 0.03 / 0.1 against @reference)")


def print_power(by_size: dict[int, dict], policy: gs.GatePolicy) -> None:
    print("\n3. Promotion rate by true micro-F2 gain over the champion (every class improves alike)")
    rows = [("old rule (judge)", "old"), ("superiority (test + class drop)", "superiority"),
            ("superiority, min_improvement 0", "superiority, min_improvement 0"),
            (f"non-inferiority (all {1 + len(CLASSES)} bounds)", "ni"),
            ("non-inferiority, micro bound only", "bound micro")]
    scenarios = ["equal"] + [f"{g:+.3f}" for g in GAINS]
    print("  " + f"{'rule':<36} | {'true gain':>9}" + "".join(f" | {n:>4} pts" for n in by_size))
    for label, key in rows:
        for scenario in scenarios:
            gain = "0" if scenario == "equal" else scenario
            print("  " + f"{label:<36} | {gain:>9}" + "".join(f" | {pct(r['hits'][scenario][key]):>8}"
                                                                for r in by_size.values()))


def print_first_models(first: dict[int, dict], policy: gs.GatePolicy) -> None:
    print("\n4. First models: share of gates that PROMOTE under the old rules 1-2 and the new rules; the new class "
          "rules one by one (share passed)")
    print(f"  {'model':<17} | {'patients':>8} | {'micro-F2':>8} | {'old rules':>9} | {'class margin':>12} | "
          f"{'recall floor':>12} | {'exam floor':>10} | {'new rules, size signed off':>26} | {'new default':>11} | "
          f"EDH on the gate")
    for name in next(iter(first.values())):
        for n, r in first.items():
            h = r[name]
            print(f"  {name:<17} | {n:>8} | {np.mean(h['micro']):>8.3f} | {pct(h['old']):>9} | "
                  f"{pct(h['margin']):>12} | {pct(h['recall']):>12} | {pct(h['exam']):>10} | {pct(h['rules']):>26} | "
                  f"{pct(h['default']):>11} | {pct(h['edh_judged'])}")


def print_year(result: dict, policy: gs.GatePolicy) -> None:
    overall, one_class, worse_micro, worse_class = result["steps"]
    print(f"\n5. {result['weeks']} weekly retrains on one gate set of {result['patients']} patients, "
          f"{result['years']} simulated years. Each week: the champion retrained equal (1/2), slightly worse "
          f"overall (1/4: {overall:+.3f} logits, "
          f"micro-F2 about -{worse_micro}) or on one random class (1/4: sensitivity {one_class:+.3f} logits, that "
          f"class's F2 about -{worse_class}). Drift = the champion's true F2 minus the reference's (the first "
          f"champion) after the year; budget micro {policy.drift_budget}, class {policy.drift_class_budget}.")
    print(f"  {'policy':<30} | {'promotions/yr':>13} | {'micro drift mean / 5 % / min':>28} | "
          f"{'worst class drift mean / 5 % / min':>34} | {'years with a promotion':>22} | "
          f"{'years beyond budget (any week)':>30}")
    for name, r in result["policies"].items():
        micro_drift, class_drift = r["drift"][:, 0], r["drift"][:, 1:].min(axis=1)
        beyond = ((r["worst"][:, 0] < -policy.drift_budget)
                  | (r["worst"][:, 1:] < -policy.drift_class_budget).any(axis=1))
        print(f"  {name:<30} | {r['promotions'].mean():>13.2f} | {micro_drift.mean():+.4f} / "
              f"{np.percentile(micro_drift, 5):+.4f} / {micro_drift.min():+.4f} | {class_drift.mean():+.4f} / "
              f"{np.percentile(class_drift, 5):+.4f} / {class_drift.min():+.4f}{'':>5} | "
              f"{pct(r['promotions'] > 0):>22} | {rate(beyond):>30}")


if __name__ == "__main__":
    main()
