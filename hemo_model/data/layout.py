"""The DLCV data layout, in plain Python (no torch) so validation and tooling import it cheaply.

```
<root>/train.csv                      dirname,ID,ich,ivh,sah,sdh,edh
<root>/train/ID_<hash>/<hash>_<k>.jpg one 8-bit grayscale slice, k = 0..n-1 in scan order
<root>/test/ID_<hash>/<hash>_<k>.jpg  same, no labels
<root>/masks/ID_<hash>/<hash>_<k>.png optional lesion outlines of labelled slices (lesion_masks.py)
```
A slice may also be ``<hash>_<k>.png``: a lossless RGB PNG whose channels are three CT windows
(brain, subdural, bone), as ``hemo import-dicom --windows brain,subdural,bone`` writes them.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


class DataError(ValueError):
    """The data folder does not hold what the library needs (message names file and fix)."""


class UnsafePath(DataError):
    """A path that would lead outside the data folder (``..``, absolute, symlink out)."""


LABELS_FILE = "train.csv"
SPLITS = ("train", "test")

SLICE_SUFFIXES = (".jpg", ".png")
# Matched with ``fullmatch`` only: ``$`` (and ``match``) would accept a name with a trailing
# newline ("x_1.jpg\n"), which then reaches output CSVs and logs as a second line. ASCII digits
# only: ``\d`` also takes "١" or "２", and int() reads those as numbers.
SLICE_NAME = re.compile(r"(?P<hash>[A-Za-z0-9]+)_(?P<k>[0-9]+)\.(?:jpg|png)")
PATIENT_DIR = re.compile(r"ID_(?P<hash>[A-Za-z0-9]+)")
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class SliceName:
    hash: str
    k: int


def parse_slice_name(name: str) -> SliceName | None:
    """``'bab8497a5b_12.jpg'`` (or ``.png``) -> ``SliceName('bab8497a5b', 12)``; ``None`` if malformed."""
    match = SLICE_NAME.fullmatch(name)
    if match is None:
        return None
    return SliceName(match["hash"], int(match["k"]))


def patient_hash(dirname: str) -> str | None:
    """``'ID_bab8497a5b'`` -> ``'bab8497a5b'``; ``None`` if malformed."""
    match = PATIENT_DIR.fullmatch(dirname)
    return match["hash"] if match else None


def is_safe_component(name: str) -> bool:
    """True if ``name`` is one plain path component: no separators, no ``..``, not absolute.

    Label files come from users; a row must never make us read outside the data folder.
    """
    return bool(SAFE_NAME.fullmatch(name)) and ".." not in name


def slice_path(root: Path, split: str, dirname: str, name: str) -> Path:
    return root / split / dirname / name


def inside(root: Path, *parts: str) -> Path:
    """``root / parts...``, refused unless every part is one plain name and the real path (symlinks
    resolved) stays inside the real ``root``. The one path guard of validation and the loaders:
    label files and folders come from users and must never make us read elsewhere."""
    for part in parts:
        if not is_safe_component(part):
            raise UnsafePath(f"{part!r} (under {root}) is not a plain file or folder name: no '..', separators or "
                             "absolute paths; fix the label file or the folder name")
    path = root.joinpath(*parts)
    real_root = root.resolve()
    real = path.resolve()
    if not real.is_relative_to(real_root):
        raise UnsafePath(f"{path} resolves to {real}, outside the data folder {real_root} (a symlink?); copy the "
                         "file into the data folder instead of linking to it")
    return path


def confined(folder: Path, root: Path) -> Path:
    """``folder``, refused when it lies under the data ``root`` by name but not in fact.

    ``data/test`` (or any folder named under the data root) may itself be a symlink to somewhere
    else: validation flags that, and a step reading it must not quietly score or train on what the
    link points at. A folder outside the data root, given explicitly, is the user's choice (its
    patient folders and slices are still held inside it by :func:`inside`). "Named under" is
    lexical (absolute, ``..`` folded, no symlink followed); "inside" is real: the folder as the
    OS will open it (``data/sub/../test`` through a linked ``sub`` too), and :func:`inside` for
    each name on the way."""
    named = Path(os.path.normpath(folder.absolute()))
    named_root = Path(os.path.normpath(root.absolute()))
    if not named.is_relative_to(named_root):
        return folder
    real, real_root = folder.resolve(), root.resolve()
    if not real.is_relative_to(real_root):
        raise UnsafePath(f"{folder} is under the data folder {root} but resolves to {real}, outside {real_root} "
                         f"(a symlink?); put the patient folders into {folder} itself instead of linking, or pass "
                         "the outside folder itself as --data")
    inside(root, *named.relative_to(named_root).parts)
    return folder


def list_split(root: Path, split: str) -> dict[str, list[str]]:
    """Patient folder -> sorted slice file names found on disk for ``split`` (may be empty)."""
    base = root / split
    if not base.is_dir():
        return {}
    found: dict[str, list[str]] = {}
    for patient_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        found[patient_dir.name] = sorted(f.name for f in patient_dir.iterdir() if f.is_file())
    return found


@dataclass(frozen=True)
class LabelRow:
    line: int
    """Line number in the file (the header is line 1)."""
    values: dict[str, str]


def read_label_rows(path: Path) -> tuple[list[str], list[LabelRow]]:
    """The one reader of label files, used by validation and by every loader, so both see the
    same rows: UTF-8 with or without a BOM, LF or CRLF, quoted fields, blank lines skipped.
    Values are kept as text (validation decides what is a valid label)."""
    import csv

    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        rows = []
        for raw in reader:
            if not any(cell.strip() for cell in raw):
                continue  # blank or whitespace-only line, e.g. a trailing newline
            values = {name: (raw[i] if i < len(raw) else "") for i, name in enumerate(header)}
            rows.append(LabelRow(reader.line_num, values))
    return header, rows


def labelled_patients(root: Path) -> list[str]:
    """Patient folders named in ``<root>/train.csv`` (sorted, unique), without reading images."""
    _, rows = read_label_rows(root / LABELS_FILE)
    return sorted({row.values.get("dirname", "") for row in rows} - {""})
