"""Which patient each series folder belongs to, and what its pixels were: ``<root>/series.csv``.

```
dirname,patient,pixels_sha256
ID_3f9a0c11d2,P_9c1e44ab03f2d6e1,5b0c...e7   one row per series folder (train/ or test/)
```

A folder of the DLCV layout is one *series* (one scan). A patient may have several: a follow-up
scan, a second reconstruction. Two things follow that folder names cannot tell:

* **Roles follow patients, not series.** A patient's follow-up scan in ``train`` and first scan in
  ``gate`` would let the gate score a model on a patient it trained on; and two scans of one
  patient in the gate are not independent, so the bootstrap must resample patients. ``patient`` is
  a pseudonymous key (``hemo import-dicom`` writes ``P_`` + a salted SHA-256 of the PatientID): the
  role is a hash of it (:mod:`hemo_model.data.roles`), so every series of a patient shares one role.
* **Names change, pixels do not.** Series folders are named by a salted hash of the
  SeriesInstanceUID; re-imported with another salt, every folder gets a new name and the name-based
  leak check sees new patients. ``pixels_sha256`` is a SHA-256 of the series' decoded pixel values
  in scan order (:func:`pixel_fingerprint`), independent of names, UIDs, salt and file format;
  models record the fingerprints they saw, so the gate recognises a training scan under a new name.

The file is optional: a folder without a row (a data set from ``hemo synth`` or made by hand) is
its own patient, with no fingerprint, exactly as before the file existed. The index holds no
header value: keys and digests only.
"""

from __future__ import annotations

import csv
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemo_model.data.layout import PATIENT_DIR, DataError

SERIES_FILE = "series.csv"
SERIES_COLUMNS: tuple[str, ...] = ("dirname", "patient", "pixels_sha256")
PATIENT_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
FINGERPRINT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class SeriesRecord:
    """One row: the series folder, its patient's key, and its pixel fingerprint (None if unknown)."""

    dirname: str
    patient: str
    pixels_sha256: str | None = None


def patient_key(patient_id: str, salt: str) -> str:
    """``P_`` + 16 hex characters of a salted SHA-256 of a PatientID: the same patient gets the same
    key across imports (same salt), and the key reveals nothing without the salt. The ``patient``
    domain separator keeps it unrelated to a series name hashed from the same string."""
    if not salt:
        raise ValueError("an empty salt would make patient keys reversible")
    return "P_" + hashlib.sha256(f"{salt}\0patient\0{patient_id}".encode()).hexdigest()[:16]


def pixel_fingerprint(slices: Sequence[np.ndarray]) -> str:
    """SHA-256 of a series' pixel values in scan order: each slice's shape and its values as
    little-endian float32. The same DICOM pixels give the same digest whatever the file names,
    UIDs, salt or transfer syntax (lossless); a different scan differs."""
    digest = hashlib.sha256(f"{len(slices)}".encode())
    for pixels in slices:
        array = np.ascontiguousarray(pixels, dtype="<f4")
        digest.update(repr(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def read_series_index(root: Path) -> dict[str, SeriesRecord]:
    """``{dirname: record}`` from ``<root>/series.csv``; empty when the file is absent. A malformed
    file is refused (one line naming the row), never half read: a wrong patient key would put a
    patient's scans in two roles."""
    path = root / SERIES_FILE
    if not path.is_file():
        return {}
    index: dict[str, SeriesRecord] = {}
    owner_of: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            if tuple(header) != SERIES_COLUMNS:
                raise DataError(f"{path}: header must be {','.join(SERIES_COLUMNS)} (the file `hemo import-dicom` "
                                "writes); restore it from the data set's history (dvc checkout)")
            for raw in reader:
                if not any(cell.strip() for cell in raw):
                    continue
                record = _record(path, reader.line_num, raw)
                if record.dirname in index:
                    raise DataError(f"{path} row {reader.line_num}: {record.dirname} is listed twice; keep one row "
                                    "per series folder")
                if record.pixels_sha256 and record.pixels_sha256 in owner_of:
                    raise DataError(f"{path} row {reader.line_num}: {record.dirname} has the same pixels as "
                                    f"{owner_of[record.pixels_sha256]} (one scan stored twice); remove one of the "
                                    "two folders and its rows")
                if record.pixels_sha256:
                    owner_of[record.pixels_sha256] = record.dirname
                index[record.dirname] = record
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read ({type(exc).__name__}); restore it (dvc checkout)") from exc
    return index


def _record(path: Path, line: int, raw: list[str]) -> SeriesRecord:
    if len(raw) != len(SERIES_COLUMNS):
        raise DataError(f"{path} row {line}: {len(raw)} fields, expected {len(SERIES_COLUMNS)} "
                        f"({','.join(SERIES_COLUMNS)})")
    dirname, patient, pixels = raw
    if PATIENT_DIR.fullmatch(dirname) is None:
        raise DataError(f"{path} row {line}: dirname must be a series folder name ID_<hash>")
    if PATIENT_KEY.fullmatch(patient) is None:
        raise DataError(f"{path} row {line}: patient must be a key of letters, digits, '_', '.', '-' "
                        "(at most 64; never a name or an ID from the header)")
    if pixels and FINGERPRINT.fullmatch(pixels) is None:
        raise DataError(f"{path} row {line}: pixels_sha256 must be 64 lowercase hex characters or empty")
    return SeriesRecord(dirname, patient, pixels or None)


def index_rows(records: Iterable[SeriesRecord]) -> list[list[str]]:
    """CSV rows (sorted by folder) for :data:`SERIES_COLUMNS`."""
    return [[r.dirname, r.patient, r.pixels_sha256 or ""] for r in sorted(records, key=lambda r: r.dirname)]


def patients_of(dirnames: Iterable[str], index: Mapping[str, SeriesRecord]) -> dict[str, str]:
    """``{dirname: patient key}``; a folder without a row is its own patient."""
    return {d: index[d].patient if d in index else d for d in dirnames}
