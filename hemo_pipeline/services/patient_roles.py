"""The patient roles of a data set as every step sees them (train / val / gate by salted hash), and
what a model trained on them has seen (its provenance).

Kept in one place so that every step sees the same patients in the same role for the same
settings, which is what makes the gate's challenger-vs-champion comparison fair.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hemo_model.data.layout import DataError
from hemo_model.data.patients import load_split, patients_by_role
from hemo_model.data.roles import RoleSpec, assign_roles, patients_digest, role_counts
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.files import write_json_atomic
from hemo_pipeline.services.settings import (
    SplitSettings,
)


def role_spec(split: SplitSettings) -> Any:
    return RoleSpec(salt=split.salt, val_fraction=split.val_fraction, gate_fraction=split.gate_fraction)


def load_roles(root: Path, split: SplitSettings, need: tuple[str, ...] = ("train", "val", "gate")) -> dict[str, list]:
    """Labelled patients of ``root`` by role; a role this step needs must not be empty."""
    try:
        patients = load_split(root, "train")
    except DataError as exc:
        raise UserError(str(exc)) from exc
    roles = patients_by_role(patients, role_spec(split))
    for role in need:
        if not roles[role]:
            fix = ("lower split.val_fraction + split.gate_fraction" if role == "train"
                   else f"raise split.{role}_fraction")
            raise UserError(f"no patient of the {len(patients)} in {root / 'train.csv'} falls in role '{role}' "
                            f"(salt {split.salt!r}); add patients or {fix} in params.yaml "
                            "(`hemo split` shows the assignment)")
    return roles


def provenance(roles: dict[str, list], split: SplitSettings, earlier: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a model trained on the ``train`` role has seen: the split, the patients (their keys,
    :attr:`PatientSequence.patient_key`), the ``val`` patients that chose its epoch and tune its
    thresholds, and the pixel fingerprints of the scans of both (where the import recorded them), with
    ``earlier``'s when it continues another model (e.g. refinement). The gate refuses a comparison on
    a patient in either list, or on a scan whose pixels are in either, whatever its folder is called
    now: a model tuned on a gate patient has seen it as surely as one trained on it."""
    earlier = earlier or {}
    seen = {p.patient_key for p in roles["train"]} | set(earlier.get("train_patients", []))
    tuned = {p.patient_key for p in roles.get("val", [])} | set(earlier.get("val_patients", []))
    seen_pixels = {p.pixels_sha256 for p in roles["train"] if p.pixels_sha256} | set(earlier.get("train_series", []))
    tuned_pixels = ({p.pixels_sha256 for p in roles.get("val", []) if p.pixels_sha256}
                    | set(earlier.get("val_series", [])))
    # the scan folders too: a version keyed by folder (older releases, or data without series.csv)
    # and a gate keyed by patient (or the other way round) still meet on the folder names
    seen_scans = {p.dirname for p in roles["train"]} | set(earlier.get("train_scans", []))
    tuned_scans = {p.dirname for p in roles.get("val", [])} | set(earlier.get("val_scans", []))
    return {"split": asdict(split), "train_patients": sorted(seen), "train_patients_sha256": patients_digest(seen),
            "val_patients": sorted(tuned), "val_patients_sha256": patients_digest(tuned),
            "train_series": sorted(seen_pixels), "val_series": sorted(tuned_pixels),
            "train_scans": sorted(seen_scans), "val_scans": sorted(tuned_scans)}


def assignment(dirnames: list[str], split: SplitSettings, patients: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Each series folder's role, decided by its patient's key (``patients``: {dirname: key};
    a folder not in it is its own patient). Counts of folders per role, and of patients."""
    keys = {d: (patients or {}).get(d, d) for d in dirnames}
    by_patient = assign_roles(keys.values(), role_spec(split))
    roles = {d: by_patient[keys[d]] for d in sorted(keys)}
    return {"split": asdict(split), "counts": role_counts(roles), "patient_counts": role_counts(by_patient),
            "roles": roles}


def write_split_report(path: Path, roles: dict[str, list], split: SplitSettings) -> dict[str, Any]:
    """The assignment of the scans in ``roles`` (as grouped by a step) to ``path``."""
    scans = [p for group in roles.values() for p in group]
    report = assignment([p.dirname for p in scans], split, {p.dirname: p.patient_key for p in scans})
    write_json_atomic(path, report)
    return report
