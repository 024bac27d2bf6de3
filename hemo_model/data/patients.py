"""Patient sequences over the DLCV layout, and the patients of each role.

A "patient" here is one scan (one series folder): its slice files in scan order and, for
labelled data, one row of five labels per slice. Scans are grouped by role (train/val/gate,
:mod:`hemo_model.data.roles`) by the key of the person they belong to (``series.csv``,
:mod:`hemo_model.data.series_index`; a folder without a row is its own person), never split by
slice: neighbouring slices of one scan are nearly identical, and two scans of one person are
alike, so either split would leak. Plain Python and numpy: tools that only list or split patients need no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemo_model import CLASSES
from hemo_model.data.layout import (
    LABELS_FILE,
    DataError,
    confined,
    inside,
    list_split,
    parse_slice_name,
    read_label_rows,
)
from hemo_model.data.roles import ROLES, RoleSpec, role_of
from hemo_model.data.series_index import SeriesRecord, read_series_index


@dataclass(frozen=True)
class PatientSequence:
    """One scan: slice paths in scan order (k = 0..n-1) and, for labelled data, (n, 5) labels."""

    dirname: str
    paths: tuple[Path, ...]
    labels: np.ndarray | None = None
    patient: str | None = None
    """The key of the person this scan belongs to (``series.csv``); None: the folder is its own."""
    pixels_sha256: str | None = None
    """Fingerprint of the scan's pixels (``series.csv``), when the import recorded one."""

    @property
    def patient_key(self) -> str:
        """Who this scan belongs to: roles, leak checks and the bootstrap go by this, not the folder."""
        return self.patient or self.dirname

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def slice_ids(self) -> list[str]:
        return [p.name for p in self.paths]


def load_split(root: Path, split: str = "train") -> list[PatientSequence]:
    """Patients of ``split``: labelled from ``train.csv`` for train, from the folder for test."""
    if split == "train":
        return _load_labelled(root)
    return load_folder(root / split, data_root=root)


def load_folder(folder: Path, data_root: Path | None = None) -> list[PatientSequence]:
    """Unlabelled patients from a folder of ``ID_<hash>/<hash>_<k>.jpg`` (e.g. ``data/test``).

    With ``data_root`` (the data folder of the settings), a ``folder`` named under it must also
    really be inside it (:func:`hemo_model.data.layout.confined`): ``data/test`` linked elsewhere is
    refused, not read. Patient folders and slices never leave ``folder`` either way."""
    if data_root is not None:
        confined(folder, data_root)
    listing = list_split(folder.parent, folder.name)
    if not listing:
        raise DataError(f"{folder} holds no patient folders with images; check the path (--data)")
    index = read_series_index(data_root if data_root is not None else folder.parent)
    patients = []
    for dirname, names in listing.items():
        inside(folder, dirname)  # a plain name (no newline, no '..') that stays inside, before it is printed
        ordered = sorted((parsed.k, n) for n in names if (parsed := parse_slice_name(n)) is not None)
        if not ordered:
            raise DataError(f"{folder / dirname} holds no <hash>_<k>.jpg slices")
        patient, pixels = _identity(index.get(dirname))
        patients.append(PatientSequence(dirname, tuple(inside(folder, dirname, n) for _, n in ordered),
                                        patient=patient, pixels_sha256=pixels))
    return patients


def _identity(record: SeriesRecord | None) -> tuple[str | None, str | None]:
    return (None, None) if record is None else (record.patient, record.pixels_sha256)


def _load_labelled(root: Path) -> list[PatientSequence]:
    path = root / LABELS_FILE
    if not path.is_file():
        raise DataError(f"{path} not found; the data folder must hold train.csv (run `hemo validate` first)")
    header, label_rows = read_label_rows(path)
    missing_columns = [c for c in ("dirname", "ID", *CLASSES) if c not in header]
    if missing_columns:
        raise DataError(f"{path}: header {','.join(header)!r} lacks {missing_columns}; run `hemo validate`")
    rows: dict[str, list[tuple[int, str, list[float]]]] = {}
    for row in label_rows:
        values, line = row.values, row.line
        parsed = parse_slice_name(values["ID"])
        if parsed is None:
            raise DataError(f"{path} row {line}: bad ID {values['ID']!r}; run `hemo validate` for a full report")
        try:
            labels = [float(values[c]) for c in CLASSES]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path} row {line}: labels must be 0/1 ({exc}); run `hemo validate`") from exc
        rows.setdefault(values["dirname"], []).append((parsed.k, values["ID"], labels))
    index = read_series_index(root)
    patients = []
    for dirname in sorted(rows):
        ordered = sorted(rows[dirname])
        try:
            paths = tuple(inside(root, "train", dirname, name) for _, name, _ in ordered)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]} is listed in {path} but missing ({len(missing)} missing in {dirname}); "
                            "restore the images (dvc pull) or run `hemo validate`")
        patient, pixels = _identity(index.get(dirname))
        patients.append(PatientSequence(dirname, paths, np.array([lab for *_, lab in ordered], dtype=np.float32),
                                        patient=patient, pixels_sha256=pixels))
    if not patients:
        raise DataError(f"{path} has no rows")
    return patients


def patients_by_role(patients: Sequence[PatientSequence], spec: RoleSpec) -> dict[str, list[PatientSequence]]:
    """Labelled scans grouped by the stable role of their person (see :mod:`hemo_model.data.roles`):
    every scan of one patient key lands in the same role. Each list is sorted by folder name."""
    grouped: dict[str, list[PatientSequence]] = {role: [] for role in ROLES}
    for patient in sorted(patients, key=lambda p: p.dirname):
        grouped[role_of(patient.patient_key, spec)].append(patient)
    return grouped
