"""Turn a DLCV data folder into the pandas frames that the validation suite checks.

GX checks columns of tables, so every rule is expressed on a table built here: the raw label
rows, one row per patient sequence (derived), one row per image (header read and decoded) and
one row per file on disk. Each frame has an ``item`` column naming the offending patient/file,
so a failing check can say exactly what to fix. Nothing under the data folder is written.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hemo_model import CLASSES
from hemo_model.data import images
from hemo_model.data.layout import (
    LABELS_FILE,
    PATIENT_DIR,
    SPLITS,
    DataError,
    UnsafePath,
    inside,
    is_safe_component,
    list_split,
    parse_slice_name,
    patient_hash,
    slice_path,
)
from hemo_model.data.lesion_masks import MASKS_DIR, read_mask_code
from hemo_model.data.series_index import FINGERPRINT, PATIENT_KEY, SERIES_COLUMNS, SERIES_FILE
from hemo_model.data.subgroups import SUBGROUPS_FILE, header_problem, row_problem
from hemo_pipeline.services.errors import UserError


@dataclass
class Frames:
    labels: pd.DataFrame
    label_header: list[str]
    patients: pd.DataFrame
    images: pd.DataFrame
    files: pd.DataFrame
    series: pd.DataFrame | None = None
    """One row per line of series.csv (patient keys, pixel fingerprints), None without the file."""
    subgroups: pd.DataFrame | None = None
    """One row per line of subgroups.csv (scanner, thickness, matrix bands), None without the file."""
    masks: pd.DataFrame | None = None
    """One row per file under masks/ (lesion outlines), None without the folder."""


def shown(name: str) -> str:
    """``name`` as a report may print it: as is when printable, else quoted with escapes, so a
    name holding a newline ("abc_0.jpg\\n") cannot split a FAIL line or forge another one."""
    return name if name.isprintable() else repr(name)


def read_labels(data: Path) -> tuple[pd.DataFrame, list[str]]:
    """Read ``train.csv`` as text (so '1.0' or ' 1' are caught, not silently coerced)."""
    path = data / LABELS_FILE
    if not path.is_file():
        raise UserError(f"{path} not found: the data folder must hold train.csv (dirname,ID,{','.join(CLASSES)})")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=True, skipinitialspace=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be parsed as CSV ({exc}); fix the file and retry") from exc
    header = [str(c) for c in frame.columns]
    frame.insert(0, "row", range(2, len(frame) + 2))  # line number in the file, header is line 1
    dirname = frame["dirname"] if "dirname" in frame else pd.Series([""] * len(frame), dtype=str)
    ident = frame["ID"] if "ID" in frame else pd.Series([""] * len(frame), dtype=str)
    frame["item"] = [f"row {r} ({shown(d)}/{shown(i)})"
                     for r, d, i in zip(frame["row"], dirname.fillna(""), ident.fillna(""))]
    frame["safe_path"] = [
        isinstance(d, str) and isinstance(i, str) and is_safe_component(d) and is_safe_component(i)
        for d, i in zip(dirname, ident)
    ]
    parsed = [parse_slice_name(i) if isinstance(i, str) else None for i in ident]
    frame["id_well_formed"] = [p is not None for p in parsed]
    frame["id_matches_dirname"] = [
        p is not None and isinstance(d, str) and patient_hash(d) == p.hash for p, d in zip(parsed, dirname)
    ]
    frame["k"] = [p.k if p is not None else -1 for p in parsed]
    return frame, header


def series_frame(data: Path) -> pd.DataFrame | None:
    """``series.csv`` as text, one row per line, with whether the row is well formed and its
    folder exists; None when the data set has no such file (every folder its own patient)."""
    import csv

    path = data / SERIES_FILE
    if not path.is_file():
        return None
    rows = []
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, [])
            for raw in reader:
                if not any(cell.strip() for cell in raw):
                    continue
                cells = (raw + ["", "", ""])[:3]
                dirname, patient, pixels = cells
                well_formed = (tuple(header) == SERIES_COLUMNS and len(raw) == 3
                               and PATIENT_DIR.fullmatch(dirname) is not None
                               and PATIENT_KEY.fullmatch(patient) is not None
                               and (not pixels or FINGERPRINT.fullmatch(pixels) is not None))
                rows.append({"item": f"series.csv row {reader.line_num} ({shown(dirname)})", "dirname": dirname or None,
                             "pixels_sha256": pixels or None, "well_formed": well_formed,
                             "has_folder": well_formed and any((data / split / dirname).is_dir() for split in SPLITS)})
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}); restore it (dvc checkout)") from exc
    return pd.DataFrame(rows, columns=["item", "dirname", "pixels_sha256", "well_formed", "has_folder"])


def subgroups_frame(data: Path) -> pd.DataFrame | None:
    """``subgroups.csv`` one row per line, with what is wrong with it (the reader's own rules) and
    whether its folder exists; None when the data set has no such file."""
    import csv

    path = data / SUBGROUPS_FILE
    if not path.is_file():
        return None
    rows = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's byte-order mark
            reader = csv.reader(handle)
            header = next(reader, [])
            bad_header = header_problem(header)
            if bad_header:
                rows.append({"item": f"subgroups.csv header ({bad_header})", "dirname": None, "well_formed": False,
                             "has_folder": None})
            for raw in reader:
                if not any(cell.strip() for cell in raw):
                    continue
                problem = bad_header or row_problem(header, raw)
                dirname = raw[0] if raw else ""
                rows.append({"item": f"subgroups.csv row {reader.line_num} ({shown(dirname)}"
                                     + (f": {problem}" if problem else "") + ")",
                             "dirname": dirname or None, "well_formed": problem is None,
                             "has_folder": problem is None and any((data / s / dirname).is_dir() for s in SPLITS)})
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} cannot be read ({type(exc).__name__}); restore it (dvc checkout)") from exc
    return pd.DataFrame(rows, columns=["item", "dirname", "well_formed", "has_folder"])


def masks_frame(data: Path, labels: pd.DataFrame) -> pd.DataFrame | None:
    """One row per entry of ``masks/<folder>/``: whether it is a well-formed lesion mask
    (:mod:`hemo_model.data.lesion_masks`: ``ID_<hash>/<hash>_<k>.png``, a regular file inside the
    data folder, an 8-bit grayscale square PNG with values 0-31), whether train.csv labels its slice,
    and whether it outlines only classes the slice is labelled with. None without the folder."""
    folder = data / MASKS_DIR
    if not folder.is_dir():
        return None
    positives: dict[tuple[str, str], set[int]] = {}
    if set(CLASSES) <= set(labels.columns):
        for row in labels[["dirname", "ID", *CLASSES]].itertuples(index=False):
            dirname, ident, *flags = row
            if isinstance(dirname, str) and isinstance(ident, str):
                positives[dirname, Path(ident).stem] = {i for i, f in enumerate(flags) if f == "1"}
    rows = []
    for patient in sorted(folder.iterdir()):
        if patient.name.startswith(".") and not patient.is_dir():
            continue  # a desktop's .DS_Store: train/ and test/ skip non-folders too
        entries = sorted(patient.iterdir()) if patient.is_dir() and not patient.is_symlink() else [patient]
        for entry in entries:
            rows.append(_mask_row(data, patient.name, entry, positives))
    return pd.DataFrame(rows, columns=["item", "well_formed", "labelled", "agrees_with_labels"])


def _mask_row(data: Path, dirname: str, entry: Path, positives: dict[tuple[str, str], set[int]]) -> dict:
    item = f"{MASKS_DIR}/{shown(dirname)}" + (f"/{shown(entry.name)}" if entry.name != dirname else "")
    parsed = parse_slice_name(entry.name)
    well_formed = (entry.suffix == ".png" and parsed is not None and patient_hash(dirname) == parsed.hash
                   and entry.parent.name == dirname and is_safe_component(dirname))
    code = None
    if well_formed:
        try:
            code = read_mask_code(data, dirname, entry.name)  # the readers' own check
        except DataError:  # ImageError and UnsafePath are DataErrors
            well_formed = False
    key = (dirname, entry.stem)
    labelled = well_formed and key in positives
    agrees = None
    if labelled and code is not None:
        drawn = {i for i in range(len(CLASSES)) if (code & (1 << i)).any()}
        agrees = drawn <= positives[key]
    return {"item": item, "well_formed": well_formed, "labelled": labelled if well_formed else None,
            "agrees_with_labels": agrees}


def sequence_frame(split: str, slices: dict[str, list[int]], min_slices: int, max_slices: int) -> pd.DataFrame:
    """One row per patient: slice count and whether indices are exactly 0..n-1."""
    rows = []
    for dirname, ks in slices.items():
        ks_sorted = sorted(ks)
        n = len(ks_sorted)
        duplicates = sorted({k for k in ks_sorted if ks_sorted.count(k) > 1}) if n != len(set(ks_sorted)) else []
        missing = sorted(set(range(max(ks_sorted, default=-1) + 1)) - set(ks_sorted))
        problem = ""
        if duplicates:
            problem = f"duplicate k={duplicates[:3]}"
        elif missing:
            problem = f"missing k={missing[:3]}"
        rows.append(
            {
                "split": split,
                "dirname": dirname,
                "n_slices": n,
                "contiguous": not duplicates and not missing,
                "item": f"{split}/{shown(dirname)}" + (f" ({problem})" if problem else f" ({n} slices)"),
            }
        )
    frame = pd.DataFrame(rows, columns=["split", "dirname", "n_slices", "contiguous", "item"])
    frame.attrs["bounds"] = (min_slices, max_slices)
    return frame


def _inspect_image(data: Path, split: str, dirname: str, name: str) -> tuple:
    """(exists, inside, decodes, mode, width, height, problem) of one image; never raises. A file
    whose real path leaves the data folder is not opened at all."""
    path = slice_path(data, split, dirname, name)
    if not path.is_file():
        return False, None, None, None, 0, 0, ""
    try:
        inside(data, split, dirname, name)
    except UnsafePath:
        return True, False, None, None, 0, 0, "links outside the data folder"
    try:
        info = images.inspect(path, modes=None)
    except images.ImageError as exc:
        return True, True, False, None, 0, 0, str(exc).split(": ", 1)[-1]
    try:
        images.read(path, modes=None)
    except images.ImageError as exc:
        return True, True, False, info.mode, info.width, info.height, str(exc).split(": ", 1)[-1]
    return True, True, True, info.mode, info.width, info.height, ""


def image_frame(data: Path, entries: list[tuple[str, str, str]], workers: int = 4) -> pd.DataFrame:
    """Check and decode every referenced image the way the loaders will (threads: PIL releases
    the GIL while decoding). A row's item names the file and, if it failed, why."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        inspected = list(pool.map(lambda e: _inspect_image(data, *e), entries))
    frame = pd.DataFrame(inspected, columns=["exists", "inside", "decodes", "mode", "width", "height", "problem"])
    frame.insert(0, "item", [f"{split}/{shown(d)}/{shown(name)}" + (f" ({problem})" if problem else "")
                             for (split, d, name), problem in zip(entries, frame["problem"])])
    frame["size"] = [f"{w}x{h}" for w, h in zip(frame["width"], frame["height"])]
    return frame


def build_frames(
    data: Path,
    min_slices: int = 22,
    max_slices: int = 40,
    check_images: bool = True,
) -> Frames:
    """Read ``data`` (DLCV layout) into the frames the suite validates."""
    if not data.is_dir():
        raise UserError(f"data folder {data} does not exist: pass --data pointing at the folder holding train.csv")
    labels, header = read_labels(data)
    usable = labels[labels["safe_path"] & labels["id_well_formed"] & labels["id_matches_dirname"]]

    train_slices: dict[str, list[int]] = {}
    for dirname, k in zip(usable["dirname"], usable["k"]):
        train_slices.setdefault(dirname, []).append(int(k))
    test_disk = list_split(data, "test")
    test_slices: dict[str, list[int]] = {}
    file_rows = []
    for dirname, names in test_disk.items():
        for name in names:
            parsed = parse_slice_name(name)
            ok = parsed is not None and patient_hash(dirname) == parsed.hash
            file_rows.append({"split": "test", "item": f"test/{shown(dirname)}/{shown(name)}", "accounted": ok})
            if parsed is not None and ok:
                test_slices.setdefault(dirname, []).append(parsed.k)
    patients = pd.concat(
        [
            sequence_frame("train", train_slices, min_slices, max_slices),
            sequence_frame("test", test_slices, min_slices, max_slices),
        ],
        ignore_index=True,
    )

    referenced = {(d, i) for d, i in zip(usable["dirname"], usable["ID"])}
    for dirname, names in list_split(data, "train").items():
        for name in names:
            file_rows.append(
                {"split": "train", "item": f"train/{shown(dirname)}/{shown(name)}",
                 "accounted": (dirname, name) in referenced}
            )
    files = pd.DataFrame(file_rows, columns=["split", "item", "accounted"])

    if check_images:
        entries = [("train", d, i) for d, i in zip(usable["dirname"], usable["ID"])]
        entries += [("test", d, name) for d, names in test_disk.items() if is_safe_component(d)  # else: files.labelled
                    for name in names if parse_slice_name(name)]
        images = image_frame(data, entries)
    else:
        images = pd.DataFrame(columns=["item", "exists", "inside", "decodes", "mode", "width", "height", "size"])
    return Frames(labels=labels, label_header=header, patients=patients, images=images, files=files,
                  series=series_frame(data), subgroups=subgroups_frame(data), masks=masks_frame(data, labels))
