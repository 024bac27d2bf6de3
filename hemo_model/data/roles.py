"""Patient roles that never move: a pure function of (salt, patient id).

Each patient is hashed with a salt to a number u in [0, 1) and falls into a bucket:

    u < gate_fraction                        -> "gate"  (held out: the gate and the reported evaluation)
    u < gate_fraction + val_fraction         -> "val"   (epoch selection, refine decision, thresholds)
    otherwise                                -> "train"

A patient's role depends on nothing else: adding, removing or reordering patients never moves an
existing patient to another role, so after new labels land the gate still scores the champion on
patients it never trained on. A seeded permutation over the patient list (what the method's
"random split" is usually implemented as) reshuffles almost everyone when one patient is added.
Growing ``val_fraction`` only takes patients from ``train``; ``gate`` patients stay where they are
unless ``gate_fraction`` or the salt change.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

TRAIN, VAL, GATE = "train", "val", "gate"
ROLES: tuple[str, ...] = (TRAIN, VAL, GATE)


@dataclass(frozen=True)
class RoleSpec:
    """The salt and fractions that define the assignment (recorded with every model version)."""

    salt: str
    val_fraction: float
    gate_fraction: float

    def __post_init__(self) -> None:
        if not (0.0 <= self.val_fraction < 1.0 and 0.0 <= self.gate_fraction < 1.0
                and self.val_fraction + self.gate_fraction < 1.0):
            raise ValueError(f"role fractions val {self.val_fraction} and gate {self.gate_fraction} must be in "
                             "[0, 1) and sum to less than 1")

    def as_dict(self) -> dict[str, float | str]:
        return {"salt": self.salt, "val_fraction": self.val_fraction, "gate_fraction": self.gate_fraction}


def bucket(patient_id: str, salt: str) -> float:
    """Uniform in [0, 1): the first 8 bytes of sha256(salt NUL patient_id)."""
    digest = hashlib.sha256(f"{salt}\x00{patient_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def role_of(patient_id: str, spec: RoleSpec) -> str:
    u = bucket(patient_id, spec.salt)
    if u < spec.gate_fraction:
        return GATE
    if u < spec.gate_fraction + spec.val_fraction:
        return VAL
    return TRAIN


def assign_roles(patient_ids: Iterable[str], spec: RoleSpec) -> dict[str, str]:
    """``{patient_id: role}``, sorted by id (the order of ``patient_ids`` does not matter)."""
    return {pid: role_of(pid, spec) for pid in sorted(set(patient_ids))}


def role_counts(roles: Mapping[str, str]) -> dict[str, int]:
    values = list(roles.values())
    return {role: values.count(role) for role in ROLES}


def patients_digest(patient_ids: Iterable[str]) -> str:
    """sha256 of the sorted, newline-joined ids: identifies a training set without listing it."""
    return hashlib.sha256("\n".join(sorted(set(patient_ids))).encode()).hexdigest()
