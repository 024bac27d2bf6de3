"""What each series folder belongs to besides its patient: scanner, slice thickness band, image
size band. ``<root>/subgroups.csv``, optional:

```
dirname,scanner,thickness,matrix
ID_3f9a0c11d2,Siemens,3-5mm,512
```

CLAIM 2024 and TRIPOD+AI ask for results by subgroup, because a model can be well calibrated on
average and not for one vendor's scanners or for thin slices. `hemo import-dicom` writes the
three columns from the headers (:func:`dicom_subgroups`), `hemo synth` writes the phantom's
scanner, and `hemo evaluate` reports every exam-level figure per value on the gate patients.

Only coarse, closed vocabularies reach the file: a vendor from a fixed list (anything else is
``other``), thickness and size bands. Free header text (a model name, a station name, an
institution) never does, so the file can travel with the data and its values can be printed.
The columns are open: a team can add its own (``site``, ``protocol``) by hand, under the same
rules for names and values.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from hemo_model.data.layout import PATIENT_DIR, DataError

SUBGROUPS_FILE = "subgroups.csv"
COLUMN = re.compile(r"[a-z][a-z0-9_]{0,31}")
VALUE = re.compile(r"[A-Za-z0-9<>][A-Za-z0-9 ._<>+-]{0,31}")
"""A value never starts with ``= + - @`` (a spreadsheet would run it as a formula) and never
holds a comma, quote or line break."""
MAX_COLUMNS = 8
UNKNOWN = "unknown"

VENDORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("GE", ("ge", "ge medical", "general electric", "ge healthcare", "gehc")),
    ("Siemens", ("siemens",)),
    ("Philips", ("philips",)),
    ("Canon", ("canon", "toshiba")),
    ("Hitachi", ("hitachi",)),
    ("Fujifilm", ("fujifilm",)),
    ("Neusoft", ("neusoft",)),
    ("United Imaging", ("united imaging", "uih")),
)
"""(group, lowercase words of Manufacturer (0008,0070), matched as whole words): the CT vendors a
hospital meets. Whole words: "Cambridge Medical" is not GE."""

PHANTOM_SCANNERS: dict[str, float] = {"Phantom-A": 0.0, "Phantom-B": 4.0}
"""The phantom generator's scanners and the offset (HU) each adds to every pixel: a mild
calibration drift, as two real scanners' water values differ by a few HU."""
PHANTOM_MANUFACTURER = "hemo-pipeline"

THICKNESS_BANDS: tuple[tuple[float, str], ...] = ((1.5, "0-1.5mm"), (3.0, "1.5-3mm"), (5.0, "3-5mm"))
"""Upper bounds (mm, inclusive) and names; thicker is ``5mm+``: thin-slice series and the 5 mm
reconstructions most head-CT triage runs on look different to a model."""


def scanner_group(manufacturer: str, model: str = "") -> str:
    """The vendor group of a Manufacturer value; ``other`` for any vendor not listed, ``unknown``
    when the header has none. The phantom's scanners are told apart by their model name."""
    text = " ".join(manufacturer.lower().split())
    if not text:
        return UNKNOWN
    if text == PHANTOM_MANUFACTURER:
        return model if model in PHANTOM_SCANNERS else "other"
    for group, needles in VENDORS:
        if any(re.search(rf"(?<![a-z0-9]){re.escape(needle)}(?![a-z0-9])", text) for needle in needles):
            return group
    return "other"


def thickness_band(mm: float | None) -> str:
    """``0-1.5mm`` .. ``5mm+`` for a slice thickness (or spacing) in mm; ``unknown`` without one."""
    if mm is None or not mm > 0:  # also NaN
        return UNKNOWN
    for upper, name in THICKNESS_BANDS:
        if mm <= upper + 1e-6:
            return name
    return "5mm+"


def size_band(rows: int, columns: int) -> str:
    """The matrix by its larger side: ``512`` (the usual head-CT matrix), ``<512`` or ``>512``."""
    side = max(rows, columns)
    if side == 512:
        return "512"
    return "<512" if side < 512 else ">512"


def dicom_subgroups(scanner: str, thickness_mm: float | None, rows: int, columns: int) -> dict[str, str]:
    """The row `hemo import-dicom` writes for one series (``scanner`` already grouped)."""
    return {"scanner": scanner, "thickness": thickness_band(thickness_mm),
            "matrix": size_band(rows, columns)}


def header_problem(header: list[str]) -> str | None:
    """What is wrong with a subgroups.csv header, or None."""
    columns = header[1:]
    if (not header or header[0] != "dirname" or not columns or len(columns) > MAX_COLUMNS
            or len(set(columns)) != len(columns) or not all(COLUMN.fullmatch(c) for c in columns)):
        return (f"the header must be dirname and 1 to {MAX_COLUMNS} distinct lowercase column names (letters, digits, "
                "'_'), e.g. dirname,scanner,thickness,matrix; fix the header")
    return None


def row_problem(header: list[str], raw: list[str]) -> str | None:
    """What is wrong with one row under a good header, or None (the one rule of reader and validation)."""
    if len(raw) != len(header):
        return f"{len(raw)} fields, expected {len(header)} ({','.join(header)})"
    if PATIENT_DIR.fullmatch(raw[0]) is None:
        return "dirname must be a series folder name ID_<hash>"
    for column, value in zip(header[1:], raw[1:]):
        if VALUE.fullmatch(value) is None:
            return (f"{column} must be 1-32 letters, digits, spaces or '._<>-', starting with a letter, digit, '<' or "
                    "'>' (a coarse group, never free header text)")
    return None


def read_subgroups(root: Path) -> dict[str, dict[str, str]]:
    """``{dirname: {column: value}}`` from ``<root>/subgroups.csv``; empty when the file is absent.
    A malformed file is refused with one line naming the row: a figure reported for the wrong
    group is worse than none."""
    path = root / SUBGROUPS_FILE
    if not path.is_file():
        return {}
    found: dict[str, dict[str, str]] = {}
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
            reader = csv.reader(handle)
            header = next(reader, [])
            problem = header_problem(header)
            if problem:
                raise DataError(f"{path}: {problem}")
            line = reader.line_num + 1  # where the next row starts (a quoted value may span lines)
            for raw in reader:
                start, line = line, reader.line_num + 1
                if not any(cell.strip() for cell in raw):
                    continue
                problem = row_problem(header, raw)
                if problem is None and raw[0] in found:
                    problem = f"{raw[0]} is listed twice; keep one row per series folder"
                if problem:
                    raise DataError(f"{path} row {start}: {problem}")
                found[raw[0]] = dict(zip(header[1:], raw[1:]))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path} cannot be read ({type(exc).__name__}); restore it (dvc checkout)") from exc
    return found


def subgroup_rows(groups: Mapping[str, Mapping[str, str]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows (sorted by folder) for :data:`SUBGROUPS_FILE`; a column a folder lacks reads
    ``unknown``."""
    columns: list[str] = []
    for values in groups.values():
        columns.extend(c for c in values if c not in columns)
    rows = [[d, *(groups[d].get(c, UNKNOWN) for c in columns)] for d in sorted(groups)]
    return ["dirname", *columns], rows


def write_subgroups(path: Path, groups: Mapping[str, Mapping[str, str]]) -> None:
    """Plain write (the library's writers stage the whole folder and rename it)."""
    header, rows = subgroup_rows(groups)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def by_group(dirnames: Iterable[str], groups: Mapping[str, Mapping[str, str]]) -> dict[tuple[str, str], list[int]]:
    """``{(column, value): indices into dirnames}``; a folder without a row counts as ``unknown``
    in every column, so the groups of each column add up to all exams."""
    names = list(dirnames)
    columns: list[str] = []
    for values in groups.values():
        columns.extend(c for c in values if c not in columns)
    out: dict[tuple[str, str], list[int]] = {}
    for column in columns:
        for i, name in enumerate(names):
            out.setdefault((column, groups.get(name, {}).get(column, UNKNOWN)), []).append(i)
    return dict(sorted(out.items()))
