"""The gate's statistics: calibrated promotion decisions on paired per-patient confusion counts.

What the gate knows about each model is its per-patient confusion counts at the served thresholds,
``(patients, classes, 3)`` holding ``[tp, fp, fn]`` (``hemo_model.metrics.patient_counts``), paired
by patient: row ``i`` of every array is the same gate patient. From those counts alone this module
derives everything it judges: micro- and per-class F2, per-class recall, the exam-level "any
hemorrhage" truth and decision (a patient is positive when any class has a positive slice, flagged
when any slice is flagged for any class: ``tp + fn > 0`` and ``tp + fp > 0`` summed over classes),
and how many patients carry each class. The all-positive model's counts come from the caller
(they need the slice count, which the counts do not hold).

Why these statistics (measured by ``benchmarks/gate_simulation.py``; docs/gate_policy.md):

* **Superiority** is a paired permutation test: under H0 "the two models are exchangeable within
  each patient" swapping the two models' counts of a patient leaves the joint law unchanged, so the
  p-value of the observed micro-F2 gain among all 2**n swaps is exact at any n (all swaps are
  enumerated up to ``exact_up_to`` patients, a Monte Carlo draw with the (1 + hits) / (1 + draws)
  p-value is exact beyond). Around the pooled mean of the two models a swap flips the sign of a
  patient's linearised contribution to the gain, so the test also holds its level asymptotically
  for the weaker H0 "equal population micro-F2" (the sign-flip keeps the second moment).
  The decision uses the observed gain, never the mean of resamples.
* **Non-inferiority and the drift budget** cannot use a permutation test (at the boundary the
  models are not exchangeable). They use a one-sided lower confidence bound of the paired gain
  (overall and per class) and the intersection-union principle: every bound must clear its margin,
  which keeps the overall error at ``alpha`` without a multiplicity correction.
* **BCa** intervals are reported alongside (bias-corrected and accelerated bootstrap, with the
  acceleration from the patient jackknife).

Kernels accept leading batch axes, ``(..., patients, classes, 3)``, so the simulation benchmark
judges thousands of gates at once with the same code that judges one; :func:`decide` judges one
gate and returns every rule with a one-line detail for ``gate.json``. Pure numpy/scipy: no MLflow,
no torch, no scikit-learn.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import special, stats

from hemo_model import CLASSES

TP, FP, FN = 0, 1, 2
"""Order of the last axis of every counts array (as in ``hemo_model.metrics``)."""

# --- defaults: each number is measured by benchmarks/gate_simulation.py (docs/gate_policy.md) -------

ALPHA = 0.025
"""One-sided error of every statistical rule: the old rule's nominal level (the lower end of a
two-sided 95 % interval above 0), now actually held. Measured: an equal model is promoted in
1.6-2.3 % of decisions at 12, 17, 50 and 150 gate patients (the old rule: 3.9-2.5 %), well inside
the issue's 5 % bound."""

BOUND_ALPHA = 0.01
"""Nominal one-sided level of the jackknife-t lower bounds (non-inferiority, drift budget). A ratio
of sums over a few positive patients runs above its nominal level: a class whose sensitivity
dropped exactly to the margin passed in 4.5 % of gates at a nominal 2.5 % (17 patients; the
estimate and its standard error are correlated). At 1 % the measured rate at the margin is
0.05-2.6 % at 12-150 patients, for micro-F2 and every class, in every simulated world tried
(docs/gate_policy.md): at most ALPHA within the simulation's error."""

ALPHA_SPENDING = False
"""Superiority: spend ALPHA over the decisions made on one gate set (alpha_for_decision). Off: in a
year of weekly challengers none of which is better, superiority still moves the champion in 21-25 %
of years (spending: 0-0.5 %), but only ever to an equal model in the simulation (drift exactly 0 over
400 years; the budget bounds any other), while spending leaves no power
after a few decisions (alpha_8 is below the smallest p-value 4000 swaps can give) and a gate set
that grows with every labelled batch gets a new digest, which restarts the count."""

PERMUTATIONS = 4000
"""Monte Carlo swaps when the gate has more than ``EXACT_UP_TO`` patients. The p-value stays exact
whatever the number; 4000 make its Monte Carlo standard error 0.0025 at p = 0.025 (a decision at
the boundary is not a coin toss) and cost ~10 ms at 150 patients."""

EXACT_UP_TO = 12
"""Enumerate all 2**n swaps up to this many patients (4096 at 12: deterministic, no seed)."""

BOOTSTRAP = 2000
"""Paired bootstrap resamples for the BCa intervals (the old gate's count)."""

MARGIN_OVER_TRIVIAL = 0.1
"""Micro-F2 above the all-positive model's (unchanged from the old rule 1)."""

CLASS_MARGIN_OVER_TRIVIAL = 0.1
"""Each class with positives on the gate: F2 above that class's own all-positive F2 by this much.
The all-positive F2 of a class is 5p / (4p + 1) at slice prevalence p: 0.17 for EDH (p .04) up to
0.50 for SDH (p .17), so an absolute floor cannot tell a class detector from a model that flags
everything; the margin can (an all-positive class scores exactly its baseline and is refused).
0.1 is the overall margin applied per class; the README's weakest real class (the method head's
SAH, 0.437 against ~0.4) shows how close weak but working models come, so a larger margin would
start refusing models that do detect the class."""

CLASS_RECALL_FLOOR = 0.5
"""Each class with positives: at least half of its positive slices flagged. F2 weighs recall 4x,
yet a precise model that finds a third of the EDH slices still clears the margin above; a lesion
spans ~10 slices, so flagging half of them finds nearly every lesion. Measured: a good model fails
this floor in 2.1 % of 50-patient gates and 0.1 % of 150-patient gates."""

EXAM_SENSITIVITY_FLOOR = 0.9
"""Exam-level "any hemorrhage" sensitivity: share of bleeding patients flagged somewhere. A triage
tool that lets one bleeding exam in ten pass unflagged is not acceptable whatever its F2. A backstop
rather than a filter: any flag on any slice counts, so working models flag every bleeding exam in
the simulation (a good model passed it in 100 % of gates); it refuses models that go quiet."""

MIN_PATIENTS = 50
"""Gate patients below which the gate refuses unless a person signs off. Not needed for the
false-promotion rate (the permutation test is exact at 12), but for everything else the gate
promises: at 50 patients the class rules pass a good model in 96 % of gates (71 % at 12, 80 % at 17)
and superiority finds a true +0.05 in 91 % (31 % at 12, 47 % at 17); 50 patients hold the
MIN_POSITIVE_PATIENTS EDH patients in 95 % of gates (EDH is in ~12 % of patients)."""

MIN_POSITIVE_PATIENTS = 3
"""Patients with a positive slice of each class, below which the gate refuses unless a person
signs off. Zero would leave the class unjudged (an EDH-blind model passes: 22 % of 12-patient gates
hold no EDH patient); with three, one patient's hard lesion cannot push a good model under the
recall floor on its own."""

MIN_IMPROVEMENT = 0.005
"""Observed micro-F2 gain a superior challenger must also show (the old rule 4, now on the observed
gain, not the mean of resamples). A practical floor, not a statistical one: at <= 150 gate patients
a gain significant at ALPHA is always above it (measured: the promotion rates with 0.005 and with 0
are identical), it binds only on large gates where +0.004 could be significant."""

MAX_CLASS_DROP = 0.05
"""Superiority mode: no class's observed F2 may drop by more than this against the champion (the
old rule 5, kept as a sanity check; the drift budget against the reference is the real bound)."""

NI_MARGIN = 0.02
"""Non-inferiority mode: the challenger's micro-F2 may be lower than the champion's by at most this
(H0: gain <= -0.02, rejected at ALPHA). Measured: a model truly 0.02 worse passes the micro bound in
0.65-1.45 % of gates; an equal model passes all six bounds in 40 % of 150-patient gates (micro alone
47 %), 3 % of 50-patient gates, never below. Non-inferiority is for large gates (>= 150)."""

NI_CLASS_MARGIN = 0.1
"""Non-inferiority mode, per class: lower bound of each class's F2 gain above -0.1. A class's F2
rests on its few positive patients (EDH: ~18 of 150), so its bound is wide: a tighter margin would
refuse equal models on EDH alone. A class truly 0.1 worse passes in <= 2.6 % of gates (measured)."""

DRIFT_BUDGET = 0.03
"""Cumulative micro-F2 drop below the approved ``@reference`` that no chain of promotions may
exceed: every promotion needs the lower bound of (challenger - reference) above -0.03. Larger
than NI_MARGIN, so one honest non-inferior step never exhausts it. Measured over 52 weekly
retrains (300 gate patients): non-inferiority without a reference drifts past 0.03 / 0.1 in 19-21 %
of years, with this budget in 2 of 400 years, by at most 0.002 (a repeated test against a fixed
bound can slip by part of one retrain's step)."""

DRIFT_CLASS_BUDGET = 0.1
"""Cumulative per-class F2 drop below the reference that no chain may exceed (at least the NI class
margin, for the same reason as DRIFT_BUDGET)."""

Mode = Literal["superiority", "noninferiority"]


# --- arithmetic on counts ------------------------------------------------------------------------


def f2(counts: np.ndarray) -> np.ndarray:
    """F2 = 5 tp / (5 tp + 4 fn + fp) over the last axis, 0 where undefined (as
    ``hemo_model.metrics.f2_from_counts``, without importing scikit-learn)."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = counts[..., TP], counts[..., FP], counts[..., FN]
    denominator = 5 * tp + 4 * fn + fp
    return np.divide(5 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)


def recall(counts: np.ndarray) -> np.ndarray:
    """tp / (tp + fn) over the last axis, 0 where there is no positive."""
    counts = np.asarray(counts, dtype=np.float64)
    tp, fn = counts[..., TP], counts[..., FN]
    return np.divide(tp, tp + fn, out=np.zeros_like(tp), where=(tp + fn) > 0)


def micro(counts: np.ndarray) -> np.ndarray:
    """Pool the class axis (second to last): micro-averaged [tp, fp, fn]."""
    counts = np.asarray(counts, dtype=np.float64)
    return np.einsum("...ck->...k", counts)  # a reduction over a short middle axis, 5x faster than sum()


def micro_f2(counts: np.ndarray) -> np.ndarray:
    """Pooled micro-F2 of (..., patients, classes, 3) counts: one value per leading index."""
    return f2(micro(counts).sum(axis=-2))


def class_f2(counts: np.ndarray) -> np.ndarray:
    """Pooled per-class F2 of (..., patients, classes, 3) counts: (..., classes)."""
    return f2(np.asarray(counts, dtype=np.float64).sum(axis=-3))


def positive_patients(counts: np.ndarray) -> np.ndarray:
    """Per class, how many patients have at least one positive slice: (..., classes)."""
    counts = np.asarray(counts)
    return ((counts[..., TP] + counts[..., FN]) > 0).sum(axis=-2)


def exam_level(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exam-level "any hemorrhage" truth and decision per patient, from the class counts alone:
    positive when any class has a positive slice, flagged when any slice is flagged for any class
    (a flag on a negative slice or for another class still sends the exam to a reader)."""
    counts = np.asarray(counts)
    positive = (counts[..., TP] + counts[..., FN]).sum(axis=-1) > 0
    flagged = (counts[..., TP] + counts[..., FP]).sum(axis=-1) > 0
    return positive, flagged


def exam_sensitivity(counts: np.ndarray) -> np.ndarray:
    """Share of bleeding patients flagged somewhere (NaN when no patient bleeds): (...)."""
    positive, flagged = exam_level(counts)
    hits, total = (positive & flagged).sum(axis=-1), positive.sum(axis=-1)
    return np.divide(hits, total, out=np.full(np.shape(total), np.nan), where=total > 0)


# --- superiority: the paired permutation test ----------------------------------------------------


@dataclass(frozen=True)
class PermutationTest:
    """One-sided paired permutation test of H0 "the models are exchangeable" against "the
    challenger's micro-F2 is higher"."""

    gain: np.ndarray
    """Observed micro-F2 gain (challenger - other): the point estimate, not a resampling mean."""
    p_value: np.ndarray
    exact: bool
    """True when every one of the 2**n swaps was enumerated (then no seed is involved)."""
    swaps: int


def swap_matrix(patients: int, permutations: int = PERMUTATIONS, exact_up_to: int = EXACT_UP_TO,
                seed: int = 0) -> tuple[np.ndarray, bool]:
    """(swaps, patients) 0/1 matrix, 1 = exchange the two models' counts of that patient.

    All 2**n rows (the identity included) when ``patients <= exact_up_to``, else ``permutations``
    rows drawn uniformly; the caller's p-value formula differs accordingly (see permutation_test)."""
    if patients <= exact_up_to:
        codes = np.arange(2 ** patients, dtype=np.int64)[:, None]
        return ((codes >> np.arange(patients, dtype=np.int64)) & 1).astype(np.float64), True
    rng = np.random.default_rng(seed)
    return rng.integers(0, 2, size=(permutations, patients)).astype(np.float64), False


def swapped_gains(challenger: np.ndarray, other: np.ndarray, swaps: np.ndarray) -> np.ndarray:
    """Micro-F2 gain after each row of ``swaps``: (..., swaps). Works on micro-pooled patient
    counts, so one (swaps x patients) @ (patients x 3) product per gate."""
    a, b = micro(challenger), micro(other)  # (..., n, 3)
    total_a, total = a.sum(axis=-2), a.sum(axis=-2) + b.sum(axis=-2)
    moved = _weighted_sums(swaps, a - b)  # (..., swaps, 3): what each swap takes from the challenger's pool
    pooled_a = total_a[..., None, :] - moved
    return f2(pooled_a) - f2(total[..., None, :] - pooled_a)


def permutation_test(challenger: np.ndarray, other: np.ndarray, permutations: int = PERMUTATIONS,
                     exact_up_to: int = EXACT_UP_TO, seed: int = 0) -> PermutationTest:
    """Paired permutation p-value of the observed micro-F2 gain of ``challenger`` over ``other``.

    Enumerated: p = share of all 2**n swaps whose gain is >= the observed one. Drawn: p = (1 + hits)
    / (1 + draws), which is exact for a finite number of random swaps (the observed labelling counts
    as one of them). Ties (patients both models score alike swap to the same gain) count as hits, so
    the test is conservative where the data cannot tell the models apart. Draws are made in blocks,
    so millions of swaps (a small spent alpha) need little memory."""
    challenger, other = _paired(challenger, other)
    n = challenger.shape[-3]
    gain = micro_f2(challenger) - micro_f2(other)
    if n <= exact_up_to:
        swaps, _ = swap_matrix(n, exact_up_to=exact_up_to)
        hits = (swapped_gains(challenger, other, swaps) >= gain[..., None] - 1e-12).sum(axis=-1)
        return PermutationTest(gain, np.asarray(hits / len(swaps), dtype=np.float64), True, len(swaps))
    rng = np.random.default_rng(seed)
    hits = np.zeros(np.shape(gain), dtype=np.int64)
    for start in range(0, permutations, _SWAP_BLOCK):
        block = rng.integers(0, 2, size=(min(_SWAP_BLOCK, permutations - start), n)).astype(np.float64)
        hits += (swapped_gains(challenger, other, block) >= gain[..., None] - 1e-12).sum(axis=-1)
    return PermutationTest(gain, np.asarray((1.0 + hits) / (1.0 + permutations), dtype=np.float64), False, permutations)


_SWAP_BLOCK = 20000


def alpha_for_decision(alpha: float, decision: int) -> float:
    """Level of the ``decision``-th (1-based) superiority decision on one gate set when the family of
    all decisions ever made on it must stay at ``alpha``: alpha * 6 / (pi^2 k^2), which sums to alpha
    over k = 1, 2, ... (Bonferroni over an open-ended sequence)."""
    if decision < 1:
        raise ValueError("decisions are counted from 1")
    return alpha * 6.0 / (math.pi ** 2 * decision ** 2)


def gate_set_digest(patients: Sequence[str]) -> str:
    """SHA-256 of the sorted gate patient names: the key under which decisions are counted."""
    return hashlib.sha256("\n".join(sorted(patients)).encode()).hexdigest()


# --- lower confidence bounds: BCa bootstrap and the jackknife ------------------------------------


def bootstrap_weights(patients: int, resamples: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """(resamples, patients) multinomial draw counts; one draw shared by both models = paired."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(patients, np.full(patients, 1.0 / patients), size=resamples).astype(np.float64)


def leave_one_out(counts: np.ndarray) -> np.ndarray:
    """(..., n, classes, 3): the gate's pooled counts without patient i, for each i."""
    counts = np.asarray(counts, dtype=np.float64)
    return counts.sum(axis=-3, keepdims=True) - counts


def _quantile(samples: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per-element quantile ``q`` (broadcast to samples.shape[:-1]) of ``samples`` along the last
    axis, NaNs ignored (linear interpolation, numpy's default); NaN where nothing is defined."""
    ordered = np.sort(samples, axis=-1)  # NaNs sort last
    defined = (~np.isnan(samples)).sum(axis=-1)
    position = np.clip(np.broadcast_to(q, defined.shape), 0.0, 1.0) * np.maximum(defined - 1, 0)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, np.maximum(defined - 1, 0))
    below = np.take_along_axis(ordered, low[..., None], axis=-1)[..., 0]
    above = np.take_along_axis(ordered, high[..., None], axis=-1)[..., 0]
    value = below + (position - low) * (above - below)
    return np.where(defined > 0, value, np.nan)


def bca_quantiles(estimate: np.ndarray, resamples: np.ndarray, jackknife: np.ndarray,
                  levels: Sequence[float]) -> np.ndarray:
    """BCa (Efron 1987) end points at nominal ``levels`` (e.g. [0.025, 0.975]): (..., len(levels)).

    ``estimate`` (...), ``resamples`` (..., B) and ``jackknife`` (..., n) of one statistic; NaN
    resamples are left out (undefined statistics). Bias correction z0 from the share of resamples
    below the estimate (ties count half, so a statistic with many exact zeros is not pushed to one
    side); acceleration a = sum(d^3) / (6 sum(d^2)^1.5), d = jackknife mean - leave-one-out value.
    A degenerate case (no spread) returns the estimate."""
    estimate = np.asarray(estimate, dtype=np.float64)
    defined = (~np.isnan(resamples)).sum(axis=-1)
    point = estimate[..., None]
    below = np.nansum(resamples < point, axis=-1) + 0.5 * np.nansum(resamples == point, axis=-1)
    share = np.clip(below / np.maximum(defined, 1), 0.5 / np.maximum(defined, 1), 1 - 0.5 / np.maximum(defined, 1))
    z0 = special.ndtri(share)
    deviation = _nanmean(jackknife, keepdims=True) - jackknife
    squares = np.nansum(deviation ** 2, axis=-1)
    acceleration = np.divide(np.nansum(deviation ** 3, axis=-1), 6.0 * squares ** 1.5,
                             out=np.zeros_like(squares), where=squares > 0)
    out = []
    for level in levels:
        z = z0 + (z0 + special.ndtri(level)) / (1.0 - acceleration * (z0 + special.ndtri(level)))
        out.append(_quantile(resamples, special.ndtr(z)))
    result = np.stack(out, axis=-1)
    spread = np.fmax.reduce(resamples, axis=-1) > np.fmin.reduce(resamples, axis=-1)  # False where all NaN
    return np.where(spread[..., None], result, estimate[..., None])


def _nanmean(values: np.ndarray, keepdims: bool = False) -> np.ndarray:
    """Mean over the last axis ignoring NaN; NaN (without numpy's warning) where nothing is defined."""
    count = (~np.isnan(values)).sum(axis=-1, keepdims=keepdims)
    total = np.nansum(values, axis=-1, keepdims=keepdims)
    return np.divide(total, count, out=np.full(np.shape(total), np.nan), where=count > 0)


def jackknife_se(jackknife: np.ndarray) -> np.ndarray:
    """Jackknife standard error sqrt((n-1)/n * sum (theta_i - mean)^2) over the last axis (NaN-aware:
    n counts the defined leave-one-out values; NaN where none is)."""
    count = (~np.isnan(jackknife)).sum(axis=-1)
    deviation = jackknife - _nanmean(jackknife, keepdims=True)
    se = np.sqrt(np.nansum(deviation ** 2, axis=-1) * (count - 1) / np.maximum(count, 1))
    return np.where(count > 0, se, np.nan)


@dataclass(frozen=True)
class GainBounds:
    """Paired gains of the challenger over another model: column 0 micro-F2, then one per class."""

    gain: np.ndarray
    """Observed gains (..., 1 + classes); NaN for a class without positives on the gate."""
    lower: np.ndarray
    """One-sided lower confidence bounds at ``alpha`` (..., 1 + classes); NaN where a class has too
    few positive patients to bound (fewer than ``min_positive_patients``)."""
    se: np.ndarray
    """Jackknife standard errors (..., 1 + classes)."""
    df: np.ndarray
    """Degrees of freedom of the t quantile (..., 1 + classes)."""
    interval: np.ndarray | None
    """Two-sided BCa intervals (..., 1 + classes, 2) at ``interval_alpha`` per tail, when asked for."""


def gain_bounds(challenger: np.ndarray, other: np.ndarray, alpha: float | None = None,
                min_positive_patients: int | None = None, interval_alpha: float | None = None,
                resamples: int = BOOTSTRAP, seed: int = 0) -> GainBounds:
    """Lower confidence bounds of the paired micro- and per-class F2 gains (non-inferiority and the
    drift budget): ``gain - t(1 - alpha, df) * jackknife SE``.

    The jackknife leaves out one patient at a time (O(n), deterministic: no seed, no resampling
    noise in a decision). ``df`` counts the patients that carry the information, minus one: for
    micro-F2 those whose counts differ between the two models (two retrains share most decisions, so
    a 150-patient gate may hold 20 informative patients), for a class the fewer of its positive
    patients and the patients whose counts of that class differ. ``alpha``
    defaults to BOUND_ALPHA, which the simulation calibrated so that a model exactly at the margin
    passes in at most ALPHA of decisions. ``interval_alpha`` adds two-sided BCa intervals for the
    report (paired bootstrap over patients)."""
    alpha = BOUND_ALPHA if alpha is None else alpha
    min_positive = max(2, MIN_POSITIVE_PATIENTS if min_positive_patients is None else min_positive_patients)
    challenger, other = _paired(challenger, other)
    gain = _gains(challenger.sum(axis=-3), other.sum(axis=-3))
    jack = np.moveaxis(_gains(leave_one_out(challenger), leave_one_out(other)), -2, -1)  # (..., 1+C, n)
    se = jackknife_se(jack)
    informative = (micro(challenger) != micro(other)).any(axis=-1).sum(axis=-1)
    informative_class = (challenger != other).any(axis=-1).sum(axis=-2)
    positives = positive_patients(challenger)
    df = np.maximum(np.concatenate([informative[..., None], np.minimum(positives, informative_class)], axis=-1) - 1, 1)
    lower = gain - stats.t.ppf(1.0 - alpha, df) * se
    enough = np.concatenate([np.ones(positives.shape[:-1] + (1,), dtype=bool), positives >= min_positive], axis=-1)
    lower = np.where(enough, lower, np.nan)
    interval = None
    if interval_alpha is not None:
        weights = bootstrap_weights(challenger.shape[-3], resamples, seed)
        boot = np.moveaxis(_gains(_resample(challenger, weights), _resample(other, weights)), -2, -1)
        interval = bca_quantiles(gain, boot, jack, [interval_alpha, 1.0 - interval_alpha])
    return GainBounds(gain, lower, se, df, interval)


def _paired(challenger: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    challenger, other = np.asarray(challenger, dtype=np.float64), np.asarray(other, dtype=np.float64)
    if challenger.shape != other.shape or challenger.ndim < 3 or challenger.shape[-1] != 3:
        raise ValueError(f"paired counts must share one shape (..., patients, classes, 3): "
                         f"{challenger.shape} vs {other.shape}")
    return challenger, other


def _same_truth(challenger: np.ndarray, other: np.ndarray, role: str) -> None:
    """Refuse counts that cannot be a pairing of the same patients: every model sees the same labels,
    so tp + fn must agree patient by patient and class by class (a shuffled or shifted patient order
    is caught here instead of being judged). Counts must be finite and non-negative."""
    for name, counts in (("challenger", challenger), (role, other)):
        if not np.isfinite(counts).all() or (counts < 0).any():
            raise ValueError(f"the {name} counts hold negative or non-finite values")
    mismatch = np.argwhere(challenger[..., TP] + challenger[..., FN] != other[..., TP] + other[..., FN])
    if len(mismatch):
        patient, k = (int(x) for x in mismatch[0][-2:])
        raise ValueError(f"the challenger and {role} counts are not paired by patient: positives (tp + fn) differ "
                         f"at row {patient}, class {k} ({len(mismatch)} cells); pass both in the same patient order")


def _resample(counts: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(..., B, classes, 3) pooled counts of each bootstrap resample."""
    n, classes = counts.shape[-3], counts.shape[-2]
    flat = counts.reshape(*counts.shape[:-3], n, classes * 3)
    return _weighted_sums(weights, flat).reshape(*counts.shape[:-3], len(weights), classes, 3)


def _weighted_sums(weights: np.ndarray, values: np.ndarray) -> np.ndarray:
    """(rows, n) weights applied to (..., n, k) values: (..., rows, k), as one matrix product over all
    leading axes (a batch of gates costs one BLAS call, not one per gate)."""
    moved = np.tensordot(weights, values, axes=([1], [-2]))  # (rows, ..., k)
    return np.moveaxis(moved, 0, -2)


def _gains(pooled_challenger: np.ndarray, pooled_other: np.ndarray) -> np.ndarray:
    """Micro and per-class F2 gains of pooled (..., classes, 3) counts: (..., 1 + classes). A class
    without positives in the pool has no F2: NaN, not 0 - 0 (which would claim the models agree)."""
    micro_gain = f2(pooled_challenger.sum(axis=-2)) - f2(pooled_other.sum(axis=-2))
    positives = pooled_challenger[..., TP] + pooled_challenger[..., FN]
    class_gain = np.where(positives > 0, f2(pooled_challenger) - f2(pooled_other), np.nan)
    return np.concatenate([micro_gain[..., None], class_gain], axis=-1)


def bca_interval(challenger: np.ndarray, other: np.ndarray | None = None, alpha: float = ALPHA,
                 resamples: int = BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """Two-sided BCa interval (alpha per tail) of the micro-F2 gain over ``other`` (or of the
    micro-F2 itself when ``other`` is None), paired bootstrap over patients: (..., 2). For reports."""
    challenger = np.asarray(challenger, dtype=np.float64)
    other = np.zeros_like(challenger) if other is None else np.asarray(other, dtype=np.float64)
    challenger, other = _paired(challenger, other)
    weights = bootstrap_weights(challenger.shape[-3], resamples, seed)
    statistic = lambda a, b: f2(a.sum(axis=-2)) - f2(b.sum(axis=-2))  # noqa: E731
    estimate = statistic(challenger.sum(axis=-3), other.sum(axis=-3))
    boot = statistic(_resample(challenger, weights), _resample(other, weights))
    jack = statistic(leave_one_out(challenger), leave_one_out(other))
    return bca_quantiles(estimate, boot, jack, [alpha, 1.0 - alpha])


# --- the class rules and the minimum gate ---------------------------------------------------------


@dataclass(frozen=True)
class ClassChecks:
    """The absolute rules every model must pass, first model included (batched like the counts)."""

    positive_patients: np.ndarray  # (..., C)
    f2: np.ndarray  # (..., C)
    trivial_f2: np.ndarray  # (..., C): the all-positive model's F2 per class
    recall: np.ndarray  # (..., C)
    exam_sensitivity: np.ndarray  # (...): NaN without a bleeding patient
    judged: np.ndarray  # (..., C): the class has positives on the gate
    beats_trivial: np.ndarray  # (..., C): F2 >= trivial + margin (True where not judged)
    recall_ok: np.ndarray  # (..., C): recall >= floor (True where not judged)
    exam_ok: np.ndarray  # (...): exam sensitivity >= floor (True without a bleeding patient)

    @property
    def passed(self) -> np.ndarray:
        return self.beats_trivial.all(axis=-1) & self.recall_ok.all(axis=-1) & self.exam_ok


def class_checks(counts: np.ndarray, trivial: np.ndarray, class_margin: float = CLASS_MARGIN_OVER_TRIVIAL,
                 recall_floor: float = CLASS_RECALL_FLOOR,
                 exam_floor: float = EXAM_SENSITIVITY_FLOOR) -> ClassChecks:
    """Per class with positives: F2 above the class's own all-positive F2 by ``class_margin`` and
    recall at least ``recall_floor``; per exam: "any hemorrhage" sensitivity at least ``exam_floor``.
    A class that flags every slice scores exactly its all-positive F2 and fails; a class never
    flagged scores 0 and fails both."""
    counts, trivial = _paired(counts, trivial)
    pooled = counts.sum(axis=-3)
    positives = positive_patients(counts)
    judged = positives > 0
    score, baseline, found = f2(pooled), f2(trivial.sum(axis=-3)), recall(pooled)
    sensitivity = exam_sensitivity(counts)
    return ClassChecks(
        positives, score, baseline, found, sensitivity, judged,
        ~judged | (score - baseline >= class_margin - 1e-12),
        ~judged | (found >= recall_floor - 1e-12),
        np.isnan(sensitivity) | (np.nan_to_num(sensitivity, nan=1.0) >= exam_floor - 1e-12))


def gate_size_ok(counts: np.ndarray, min_patients: int = MIN_PATIENTS,
                 min_positive_patients: int = MIN_POSITIVE_PATIENTS) -> np.ndarray:
    """Whether the gate is large enough to judge on: at least ``min_patients`` patients and
    ``min_positive_patients`` patients with each class (...)."""
    counts = np.asarray(counts)
    return (counts.shape[-3] >= min_patients) & (positive_patients(counts) >= min_positive_patients).all(axis=-1)


# --- the policy and one decision -------------------------------------------------------------------


@dataclass(frozen=True)
class GatePolicy:
    """Every number the gate decides with (defaults: the module constants, each with its reasoning).

    ``mode`` is pre-specified (a setting, not a choice made after seeing the result):
    ``superiority`` promotes a challenger shown better than the champion; ``noninferiority`` one
    shown no worse than ``ni_margin`` (micro) and ``ni_class_margin`` (each class), and only against
    an approved ``@reference`` (``require_reference``), whose drift budget then bounds any chain of
    such promotions."""

    mode: Mode = "superiority"
    alpha: float = ALPHA
    bound_alpha: float = BOUND_ALPHA
    alpha_spending: bool = ALPHA_SPENDING
    min_improvement: float = MIN_IMPROVEMENT
    margin_over_trivial: float = MARGIN_OVER_TRIVIAL
    class_margin_over_trivial: float = CLASS_MARGIN_OVER_TRIVIAL
    class_recall_floor: float = CLASS_RECALL_FLOOR
    exam_sensitivity_floor: float = EXAM_SENSITIVITY_FLOOR
    min_patients: int = MIN_PATIENTS
    min_positive_patients: int = MIN_POSITIVE_PATIENTS
    max_class_drop: float = MAX_CLASS_DROP
    ni_margin: float = NI_MARGIN
    ni_class_margin: float = NI_CLASS_MARGIN
    require_reference: bool = True
    drift_budget: float = DRIFT_BUDGET
    drift_class_budget: float = DRIFT_CLASS_BUDGET
    permutations: int = PERMUTATIONS
    exact_up_to: int = EXACT_UP_TO
    bootstrap: int = BOOTSTRAP
    seed: int = 0

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        problems = [
            (self.mode in ("superiority", "noninferiority"),
             f"mode must be superiority or noninferiority, not {self.mode!r}"),
            (0.0 < self.alpha < 0.5 and 0.0 < self.bound_alpha < 0.5, "alpha and bound_alpha must be in (0, 0.5)"),
            (self.min_patients >= 1 and self.min_positive_patients >= 0,
             "min_patients must be >= 1 and min_positive_patients >= 0"),
            (self.permutations >= 100 and 1 <= self.exact_up_to <= 20,
             "permutations must be >= 100, exact_up_to in 1..20"),
            (self.bootstrap >= 100, "bootstrap must be >= 100"),
            (min(self.min_improvement, self.max_class_drop, self.ni_margin, self.ni_class_margin, self.drift_budget,
                 self.drift_class_budget) >= 0, "margins, budgets and min_improvement must be >= 0"),
            (-1.0 <= min(self.class_margin_over_trivial, self.margin_over_trivial) <= 1.0,
             "the margins over the all-positive model must be in [-1, 1] (-1 turns the rule off)"),
            (0.0 <= self.class_recall_floor <= 1.0 and 0.0 <= self.exam_sensitivity_floor <= 1.0,
             "class_recall_floor and exam_sensitivity_floor must be in [0, 1]"),
            (self.drift_budget >= self.ni_margin and self.drift_class_budget >= self.ni_class_margin,
             "drift budgets must be at least the non-inferiority margins (else one honest step exhausts them)"),
        ]
        for ok, message in problems:
            if not ok:
                raise ValueError(f"gate policy: {message}")


@dataclass(frozen=True)
class Rule:
    """One rule's outcome, as the gate reports it in gate.json (``waived``: passed only because a
    person signed off)."""

    name: str
    passed: bool
    detail: str
    waived: bool = False


@dataclass
class Decision:
    promote: bool
    reason: str
    rules: list[Rule]
    figures: dict[str, object] = field(default_factory=dict)
    """JSON-ready numbers behind the rules (for gate.json and MLflow)."""


def decide(challenger: np.ndarray, trivial: np.ndarray, champion: np.ndarray | None = None,
           reference: np.ndarray | None = None, policy: GatePolicy | None = None, decision_number: int = 1,
           sign_off: str | None = None, classes: Sequence[str] = CLASSES) -> Decision:
    """Judge one gate: per-patient counts (patients, classes, 3) of the challenger, the all-positive
    model, and optionally the champion and the approved reference, all on the same gate patients
    in the same order and at their served thresholds.

    ``decision_number``: how many superiority decisions this gate set has now seen, this one
    included (counted by the caller per :func:`gate_set_digest`); used only with
    ``policy.alpha_spending``. ``sign_off``: who accepted a gate below the minimum size and why
    (recorded in the rule; without it such a gate refuses)."""
    policy = policy or GatePolicy()
    policy.check()
    challenger, trivial = _paired(challenger, trivial)
    if challenger.ndim != 3 or challenger.shape[1] != len(classes):
        raise ValueError(f"decide() judges one gate: counts of shape (patients, {len(classes)}, 3), "
                         f"not {challenger.shape}")
    for role, other in (("all-positive", trivial), ("champion", champion), ("reference", reference)):
        if other is not None:
            _same_truth(challenger, _paired(challenger, other)[1], role)
    rules: list[Rule] = []
    figures: dict[str, object] = {"mode": policy.mode, "gate_patients": int(challenger.shape[0])}
    rules.append(_gate_size_rule(challenger, policy, sign_off, classes, figures))
    rules.extend(_absolute_rules(challenger, trivial, policy, classes, figures))
    if champion is not None:
        if policy.mode == "superiority":
            rules.extend(_superiority_rules(challenger, champion, policy, decision_number, classes, figures))
        else:
            rules.append(_bound_rule("noninferior", "champion", challenger, champion, policy.ni_margin,
                                     policy.ni_class_margin, policy, sign_off, classes, figures))
    if reference is not None:
        rules.append(_bound_rule("drift_budget", "reference", challenger, reference, policy.drift_budget,
                                 policy.drift_class_budget, policy, sign_off, classes, figures))
    elif champion is not None and policy.mode == "noninferiority" and policy.require_reference:
        rules.append(Rule("reference_required", False,
                          "non-inferiority promotes models that are not better, so it needs an approved @reference "
                          "whose drift budget bounds a chain of them; a person sets it (or use superiority)"))
    failed = [r for r in rules if not r.passed]
    if failed:
        reason = "; ".join(f"{r.name}: {r.detail}" for r in failed)
    else:
        waived = [r.name for r in rules if r.waived]
        reason = ("first model: " if champion is None else f"{policy.mode}: ") + "all rules passed" + (
            f" ({', '.join(waived)} signed off)" if waived else "")
    return Decision(not failed, reason, rules, figures)


def _names(mask: np.ndarray, classes: Sequence[str]) -> list[str]:
    return [c for c, m in zip(classes, mask, strict=True) if m]


def _gate_size_rule(counts: np.ndarray, policy: GatePolicy, sign_off: str | None, classes: Sequence[str],
                    figures: dict[str, object]) -> Rule:
    positives = positive_patients(counts)
    figures["positive_patients"] = {c: int(k) for c, k in zip(classes, positives, strict=True)}
    short = [f"{c} {int(k)}" for c, k in zip(classes, positives, strict=True) if k < policy.min_positive_patients]
    n = counts.shape[0]
    problems = ([f"{n} patients (needs >= {policy.min_patients})"] if n < policy.min_patients else []) + (
        [f"positive patients {', '.join(short)} (needs >= {policy.min_positive_patients} per class)"] if short else [])
    if not problems:
        return Rule("gate_size", True, f"{n} patients, >= {policy.min_positive_patients} positive patients per class")
    detail = "gate too small to judge: " + "; ".join(problems)
    if sign_off:
        return Rule("gate_size", True, f"{detail}; signed off: {sign_off}", waived=True)
    return Rule("gate_size", False, detail + "; add gate patients (split.gate_fraction) or have a person sign off")


def _absolute_rules(counts: np.ndarray, trivial: np.ndarray, policy: GatePolicy, classes: Sequence[str],
                    figures: dict[str, object]) -> list[Rule]:
    checks = class_checks(counts, trivial, policy.class_margin_over_trivial, policy.class_recall_floor,
                          policy.exam_sensitivity_floor)
    score, baseline = float(micro_f2(counts)), float(micro_f2(trivial))
    figures.update({
        "challenger_micro_f2": score, "all_positive_micro_f2": baseline,
        "exam_sensitivity": None if np.isnan(checks.exam_sensitivity) else float(checks.exam_sensitivity),
        "classes": {c: {"f2": float(checks.f2[i]), "all_positive_f2": float(checks.trivial_f2[i]),
                        "recall": float(checks.recall[i]), "positive_patients": int(checks.positive_patients[i])}
                    for i, c in enumerate(classes)}})
    judged = _names(checks.judged, classes)
    unjudged = f"; not judged (no positive patient): {', '.join(_names(~checks.judged, classes))}" \
        if not checks.judged.all() else ""
    below = [f"{c} {checks.f2[i]:.3f} vs all-positive {checks.trivial_f2[i]:.3f}"
             for i, c in enumerate(classes) if not checks.beats_trivial[i]]
    low_recall = [f"{c} {checks.recall[i]:.3f}" for i, c in enumerate(classes) if not checks.recall_ok[i]]
    sensitivity = checks.exam_sensitivity
    positive, flagged = exam_level(counts)
    return [
        Rule("beats_all_positive", score - baseline >= policy.margin_over_trivial - 1e-12,
             f"micro-F2 {score:.4f} vs all-positive {baseline:.4f}: {score - baseline:+.4f} "
             f"(needs >= {policy.margin_over_trivial})"),
        Rule("class_beats_all_positive", not below,
             (f"F2 not above the class's all-positive F2 by {policy.class_margin_over_trivial}: " + ", ".join(below))
             if below else f"every class with positives ({', '.join(judged) or 'none'}) beats its all-positive F2 "
             f"by >= {policy.class_margin_over_trivial}{unjudged}"),
        Rule("class_recall_floor", not low_recall,
             (f"recall below {policy.class_recall_floor}: " + ", ".join(low_recall)) if low_recall
             else f"every class with positives has recall >= {policy.class_recall_floor}{unjudged}"),
        Rule("exam_sensitivity", bool(checks.exam_ok),
             "no bleeding patient on the gate" if np.isnan(sensitivity) else
             f"{int((positive & flagged).sum())} of {int(positive.sum())} bleeding patients flagged "
             f"({float(sensitivity):.3f}, needs >= {policy.exam_sensitivity_floor})"),
    ]


def _superiority_rules(challenger: np.ndarray, champion: np.ndarray, policy: GatePolicy, decision_number: int,
                       classes: Sequence[str], figures: dict[str, object]) -> list[Rule]:
    level = alpha_for_decision(policy.alpha, decision_number) if policy.alpha_spending else policy.alpha
    # enough random swaps that the smallest p-value, 1 / (swaps + 1), is well below the level
    swaps = max(policy.permutations, min(math.ceil(20.0 / level), 2_000_000))
    test = permutation_test(challenger, champion, swaps, policy.exact_up_to, policy.seed)
    gain, p_value = float(test.gain), float(test.p_value)
    low, high = (float(x) for x in bca_interval(challenger, champion, policy.alpha, policy.bootstrap, policy.seed))
    champ_f2, chal_f2 = class_f2(champion), class_f2(challenger)
    judged = positive_patients(challenger) > 0
    drops = np.where(judged, champ_f2 - chal_f2, -np.inf)
    figures["champion"] = {
        "micro_f2": float(micro_f2(champion)), "gain": gain, "gain_interval_bca": [low, high],
        "p_value": p_value, "exact": test.exact, "swaps": test.swaps, "alpha": level,
        "decision_number": decision_number, "class_f2": {c: float(champ_f2[i]) for i, c in enumerate(classes)}}
    how = f"all {test.swaps} swaps" if test.exact else f"{test.swaps} random swaps"
    spent = f", decision {decision_number} on this gate set" if policy.alpha_spending else ""
    superior = p_value <= level and gain >= policy.min_improvement - 1e-12
    too_much = [f"{c} {champ_f2[i]:.3f} -> {chal_f2[i]:.3f}" for i, c in enumerate(classes)
                if drops[i] > policy.max_class_drop + 1e-12]
    worst = int(np.argmax(drops)) if judged.any() else None
    return [
        Rule("superior", superior,
             f"observed gain {gain:+.4f} (BCa {1 - 2 * policy.alpha:.0%} [{low:+.4f}, {high:+.4f}]), "
             f"paired permutation "
             f"p = {p_value:.4f} ({how}); needs p <= {level:.4g}{spent} and gain >= {policy.min_improvement}"),
        Rule("class_drop", not too_much,
             (f"F2 drops more than {policy.max_class_drop}: " + ", ".join(too_much)) if too_much
             else f"largest class drop {drops[worst]:+.3f} ({classes[worst]}) <= {policy.max_class_drop}"
             if worst is not None else "no class with positives"),
    ]


def _bound_rule(name: str, role: str, challenger: np.ndarray, other: np.ndarray, margin: float,
                class_margin: float, policy: GatePolicy, sign_off: str | None, classes: Sequence[str],
                figures: dict[str, object]) -> Rule:
    bounds = gain_bounds(challenger, other, policy.bound_alpha, policy.min_positive_patients,
                         interval_alpha=policy.alpha, resamples=policy.bootstrap, seed=policy.seed)
    if bounds.interval is None:  # asked for with interval_alpha above
        raise RuntimeError("gain_bounds returned no interval")
    figures[role] = {
        "micro_f2": float(micro_f2(other)), "gain": _float(bounds.gain[0]), "lower_bound": _float(bounds.lower[0]),
        "margin": margin, "class_margin": class_margin, "bound_alpha": policy.bound_alpha,
        "gain_interval_bca": [_float(x) for x in bounds.interval[0]],
        "classes": {c: {"gain": _float(bounds.gain[1 + i]), "lower_bound": _float(bounds.lower[1 + i])}
                    for i, c in enumerate(classes)}}
    labels = ["micro-F2", *classes]
    limits = [margin] + [class_margin] * len(classes)
    failing, unbounded = [], []
    for label, gain, lower, limit in zip(labels, bounds.gain, bounds.lower, limits, strict=True):
        if np.isnan(gain):
            unbounded.append(f"{label} (no positive patient)")
        elif np.isnan(lower):
            unbounded.append(f"{label} (< {max(2, policy.min_positive_patients)} positive patients)")
        elif lower <= -limit:
            failing.append(f"{label} {gain:+.3f}, bound {lower:+.3f} <= -{limit}")
    if unbounded and not sign_off:
        failing.extend(f"{u}: cannot be bounded" for u in unbounded)
    level = f"one-sided {1 - policy.bound_alpha:.2%} lower bounds of the gain over the {role}"
    if failing:
        return Rule(name, False, f"{level}: " + "; ".join(failing))
    note = f"; not bounded, signed off: {', '.join(unbounded)}" if unbounded else ""
    return Rule(name, True, f"{level} above -{margin} (micro-F2: {bounds.gain[0]:+.4f}, bound {bounds.lower[0]:+.4f}) "
                f"and -{class_margin} (each class){note}", waived=bool(unbounded))


def _float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
