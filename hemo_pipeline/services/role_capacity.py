"""Whether each patient role can bear its job, decided once and said in one line per role.

* ``train`` must hold positive patients of every class, or that class cannot be learned;
* ``val`` chooses the epoch, whether refinement is kept, and tunes the thresholds: with fewer than
  ``selection.min_val_patients`` patients or ``selection.min_val_positives`` positive slices of a
  class, "best epoch" and "refinement helped" are noise, so the pipeline takes the last epoch and
  the method's refinement untested (:func:`val_can_choose`, used by the selection rule); a class
  positive in fewer than ``evaluate.min_tune_patients`` val patients keeps threshold 0.5;
* ``gate`` judges promotions: below ``gate.min_patients`` patients or ``gate.min_positive_patients``
  positive patients of a class, `hemo gate` refuses (exit 2) and a person must sign off.

`hemo split` prints these lines before anything trains, so a team sees on its first data set
which decisions its roles can make. Plain numpy: `hemo split` imports no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hemo_model import CLASSES
from hemo_pipeline.services.settings import EvaluateSettings, GateSettings, SelectionSettings


@dataclass(frozen=True)
class RoleContents:
    """What a role holds: distinct patients, positive slices and positive patients per class."""

    patients: int
    positive_slices: np.ndarray
    positive_patients: np.ndarray

    @classmethod
    def of(cls, labels: Sequence[np.ndarray], keys: Sequence[str]) -> RoleContents:
        """From each scan's (slices, 5) labels and its patient key (scans of one key count once)."""
        per_patient: dict[str, np.ndarray] = {}
        for y, key in zip(labels, keys, strict=True):
            per_patient[key] = per_patient.get(key, np.zeros(len(CLASSES))) + np.asarray(y).sum(axis=0)
        sums = np.array(list(per_patient.values())) if per_patient else np.zeros((0, len(CLASSES)))
        return cls(len(per_patient), sums.sum(axis=0), (sums > 0).sum(axis=0))


def _counts(values: np.ndarray) -> str:
    return ", ".join(f"{c} {int(v)}" for c, v in zip(CLASSES, values, strict=True))


def val_can_choose(val: RoleContents, selection: SelectionSettings) -> tuple[bool, str]:
    """Whether the val role can choose an epoch / refinement, and why (the selection rule's test)."""
    short = [f"{c} {int(n)}" for c, n in zip(CLASSES, val.positive_slices, strict=True)
             if n < selection.min_val_positives]
    if val.patients >= selection.min_val_patients and not short:
        return True, (f"val role: {val.patients} patients >= {selection.min_val_patients} and every class has "
                      f">= {selection.min_val_positives} positive slices")
    why = [f"{val.patients} patients < {selection.min_val_patients}"] if val.patients < selection.min_val_patients else []
    if short:
        why.append(f"positive slices below {selection.min_val_positives}: {', '.join(short)}")
    return False, "val role too small to choose on (" + "; ".join(why) + ")"


def gate_shortfall(patients: int, positive_patients: Sequence[float] | np.ndarray, min_patients: int,
                   min_positive_patients: int) -> list[str]:
    """What keeps a gate role from judging (empty: it can): too few patients, or too few positive
    patients of a class. One wording for `hemo gate`'s refusal and `hemo split`'s line."""
    short = [f"{c} {int(k)}" for c, k in zip(CLASSES, positive_patients, strict=True) if k < min_positive_patients]
    return ([f"{patients} patients (gate.min_patients {min_patients})"] if patients < min_patients else []) + (
        [f"positive patients {', '.join(short)} (gate.min_positive_patients {min_positive_patients})"]
        if short else [])


def tunable_thresholds(val: RoleContents, evaluate: EvaluateSettings) -> str:
    """Which classes' thresholds `hemo evaluate` can tune on this val role (the rule of
    hemo_model.metrics.classification.untunable_classes, counted per patient here)."""
    if not evaluate.tune_thresholds:
        return "thresholds stay 0.5 (evaluate.tune_thresholds false)"
    tuned = [c for c, slices, patients in zip(CLASSES, val.positive_slices, val.positive_patients, strict=True)
             if slices >= evaluate.min_tune_positives and patients >= evaluate.min_tune_patients]
    floor = (f"{evaluate.min_tune_positives} positive slices from {evaluate.min_tune_patients} positive patients "
             "(evaluate.min_tune_positives, evaluate.min_tune_patients)")
    if len(tuned) == len(CLASSES):
        return f"every class has {floor} to tune its threshold on"
    return (f"thresholds tuned for {', '.join(tuned) if tuned else 'no class'}, the others stay 0.5: fewer than "
            f"{floor}")


def role_lines(contents: Mapping[str, RoleContents], selection: SelectionSettings, gate: GateSettings,
               refit: bool = False, evaluate: EvaluateSettings | None = None) -> list[str]:
    """One line per role: its size and whether it can do its job (what the pipeline does if not);
    ``refit`` (train.refit_on_val): the val patients train too and choose nothing."""
    evaluate = evaluate or EvaluateSettings()
    train, val, judge = contents["train"], contents["val"], contents["gate"]
    missing = [c for c, n in zip(CLASSES, train.positive_patients, strict=True) if n == 0]
    lines = [f"  train: {train.patients} patients, positive patients {_counts(train.positive_patients)}: "
             + (f"no positive patient of {', '.join(missing)}, which cannot be learned; add labelled patients"
                if missing else "every class has examples to learn from")]
    ok, why = val_can_choose(val, selection)
    lines.append(f"  val: {val.patients} patients, positive slices {_counts(val.positive_slices)}, positive patients "
                 f"{_counts(val.positive_patients)}: "
                 + ("train too (train.refit_on_val): the last epoch and the method's refinement move on, thresholds "
                    "stay 0.5" if refit else
                    ("can choose the epoch and whether refinement is kept" if ok else
                     f"cannot choose ({why.removeprefix('val role too small to choose on (').rstrip(')')}): "
                     "the last epoch and the method's refinement move on untested")
                    + "; " + tunable_thresholds(val, evaluate)))
    problems = gate_shortfall(judge.patients, judge.positive_patients, gate.min_patients, gate.min_positive_patients)
    lines.append(f"  gate: {judge.patients} patients, positive patients {_counts(judge.positive_patients)}: "
                 + ("can judge promotions" if not problems else
                    f"cannot judge, too few: {'; '.join(problems)}; `hemo gate` refuses (exit 2) until it grows, or a "
                    "person signs off with `hemo promote`"))
    return lines
