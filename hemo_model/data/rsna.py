"""The RSNA Intracranial Hemorrhage Detection conventions: label file, types, submission IDs.

RSNA labels each image, not each slice position: ``ID,Label`` rows with ``ID_<image>_<type>`` for
six types, ``any`` included. ``<image>`` is the SOPInstanceUID (RSNA's de-identified files carry
``ID_<hex>`` as their SOPInstanceUID, other sources a dotted UID), so :func:`instance_key` gives
the same key for both. ``any`` is not stored: it is the maximum of the five types, derived again
wherever it is needed.

Messages never quote an ID: it is a UID, and UIDs must not reach a log. They name the file and
the line instead.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemo_model import CLASSES
from hemo_model.data.layout import DataError

TYPE_TO_CLASS: dict[str, str] = {
    "intraparenchymal": "ich",
    "intraventricular": "ivh",
    "subarachnoid": "sah",
    "subdural": "sdh",
    "epidural": "edh",
}
"""RSNA type -> the pipeline's column; ``any`` is derived, never stored."""

SUBMISSION_TYPES: tuple[str, ...] = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural",
                                     "any")
"""The six types of an RSNA submission, in RSNA's order."""

MAPPING_COLUMNS: tuple[str, ...] = ("dirname", "ID", "patient", "StudyInstanceUID", "SeriesInstanceUID",
                                    "SOPInstanceUID")
"""Header of the local mapping file from pipeline names back to DICOM UIDs (written only on
request): ``patient`` is the patient key of series.csv (no PatientID is written anywhere)."""
LEGACY_MAPPING_COLUMNS: tuple[str, ...] = ("dirname", "ID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
"""The header of earlier releases (no patient key); still read, rewritten with an empty key."""


def instance_key(sop_uid: str) -> str:
    """The ``ID_<image>`` part of an RSNA label ID for an image with this SOPInstanceUID."""
    return sop_uid if sop_uid.startswith("ID_") else f"ID_{sop_uid}"


@dataclass
class RsnaLabels:
    """Five 0/1 labels per image key, and how often a stored ``any`` disagreed with the five."""

    by_key: dict[str, list[int]] = field(default_factory=dict)
    any_mismatch: int = 0

    def get(self, sop_uid: str) -> list[int] | None:
        return self.by_key.get(instance_key(sop_uid))


def read_labels(path: Path) -> RsnaLabels:
    """Parse an RSNA label file (``ID,Label``; repeated identical rows, as in RSNA's stage 2 file,
    are allowed). Every image must have all five types; ``any`` is checked against them."""
    try:
        handle = path.open(newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"labels file {path} cannot be read ({exc.strerror}); pass an RSNA label CSV (--labels)") \
            from exc
    partial: dict[str, dict[str, int]] = {}
    stored_any: dict[str, int] = {}
    with handle:
        reader = csv.reader(handle)
        header = [h.strip() for h in next(reader, [])]
        if header[:2] != ["ID", "Label"]:
            raise DataError(f"{path}: header must be 'ID,Label' (RSNA format), got {','.join(header)[:40]!r}")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            ident, _, kind = row[0].strip().rpartition("_")
            if not ident.startswith("ID_") or (kind not in TYPE_TO_CLASS and kind != "any"):
                raise DataError(f"{path} line {line}: the ID must be ID_<image>_<type> with a type of "
                                f"{', '.join(SUBMISSION_TYPES)}")
            value = row[1].strip() if len(row) > 1 else ""
            if value not in ("0", "1"):
                raise DataError(f"{path} line {line}: Label must be 0 or 1")
            target = stored_any if kind == "any" else partial.setdefault(ident, {})
            slot = ident if kind == "any" else kind
            if slot in target and target[slot] != int(value):
                raise DataError(f"{path} line {line}: conflicts with an earlier row for the same image and type")
            target[slot] = int(value)
    labels = RsnaLabels()
    for ident, kinds in partial.items():
        missing = [k for k in TYPE_TO_CLASS if k not in kinds]
        if missing:
            raise DataError(f"{path}: an image has no row for {', '.join(missing)}; every image needs all five types")
        labels.by_key[ident] = [kinds[_type_of(c)] for c in CLASSES]
        if ident in stored_any and stored_any[ident] != max(labels.by_key[ident]):
            labels.any_mismatch += 1
    return labels


def _type_of(column: str) -> str:
    return next(t for t, c in TYPE_TO_CLASS.items() if c == column)


def with_any(values: np.ndarray) -> np.ndarray:
    """(n, 5) in CLASSES order -> (n, 6) in SUBMISSION_TYPES order, ``any`` = max of the five."""
    values = np.asarray(values, dtype=np.float64)
    order = [CLASSES.index(TYPE_TO_CLASS[t]) for t in SUBMISSION_TYPES[:-1]]
    return np.concatenate([values[:, order], values.max(axis=1, keepdims=True)], axis=1)


def submission_rows(sop_uids: Sequence[str], probabilities: np.ndarray) -> list[tuple[str, float]]:
    """RSNA submission rows ``(ID_<image>_<type>, probability)``, six per image."""
    six = with_any(probabilities)
    rows: list[tuple[str, float]] = []
    for sop, p in zip(sop_uids, six, strict=True):
        key = instance_key(sop)
        rows.extend((f"{key}_{t}", float(v)) for t, v in zip(SUBMISSION_TYPES, p))
    return rows


def read_mapping(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    """(dirname, slice file) -> its UIDs, from a mapping file written by ``hemo import-dicom``."""
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) not in (MAPPING_COLUMNS, LEGACY_MAPPING_COLUMNS):
                raise DataError(f"{path}: not a mapping file of `hemo import-dicom --mapping` (header must be "
                                f"{','.join(MAPPING_COLUMNS)})")
            return {(row["dirname"], row["ID"]): {"patient": "", **row} for row in reader}
    except OSError as exc:
        raise DataError(f"mapping file {path} cannot be read ({exc.strerror}); pass the file written by "
                        "`hemo import-dicom --mapping`") from exc


def mapping_rows(mapping: dict[tuple[str, str], dict[str, str]]) -> Iterable[list[str]]:
    for row in mapping.values():
        yield [row[c] for c in MAPPING_COLUMNS]
