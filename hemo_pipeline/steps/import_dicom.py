"""Import head-CT DICOM (a folder, RSNA's files, or a PACS over DICOMweb) into the DLCV layout.

Every file under --dicom (any nesting, any names) is read up to its pixel data; axial CT images
are grouped by series and ordered by position along the slice normal (never by file name or
InstanceNumber); scouts, reports, other modalities, images over the pixel budget
(data.max_image_size squared, from the header, before decoding) and unreadable or corrupt files
are skipped and counted, never named (export folders carry patient names). Series with burned-in
annotation (BurnedInAnnotation other than NO in any of their files: text in the pixels) are left
out and counted.
Each series becomes a patient folder <out>/<split>/ID_<hash>/<hash>_<k>.jpg (brain window, 8-bit
gray; with --windows brain,subdural,bone a lossless RGB PNG per slice, one window per channel), k
in z order. <hash> is a salted hash of the SeriesInstanceUID: no header value (names, IDs, dates,
UIDs) reaches the data folder, the report, the output or MLflow. Each series' subgroups for the
results by subgroup go to <out>/subgroups.csv in closed vocabularies only: the vendor group of
Manufacturer (GE, Siemens, ..., other), the slice thickness band and the matrix band. With --labels (RSNA
ID_<image>_<type>,Label) the series go to train/ and train.csv. Series with a gap, uneven spacing,
mixed sizes or a slice count outside validate.min_slices..max_slices are reported; with
--reject-irregular they are left out. The data folder is replaced as a whole (staged beside it);
merging into an existing one is refused if a patient folder would collide.

DICOMweb: --dicomweb URL --study UID [--study UID ...], or --dicomweb URL --modality CT --since
YYYYMMDD; the series are retrieved (WADO-RS) to a private temporary folder and imported the same way.
https only unless --allow-http; credentials from HEMO_DICOMWEB_TOKEN or HEMO_DICOMWEB_USERNAME/
HEMO_DICOMWEB_PASSWORD; searches paged and capped (--max-series), responses capped
(--max-response-bytes), redirects to another server refused (components/dicomweb.py).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from hemo_model import LABEL_COLUMNS
from hemo_model.data.dicom import (
    ALWAYS_REJECTED,
    SERIES_ISSUES,
    UNDECODABLE,
    WINDOWS,
    group_series,
    read_series_hu,
    scan_folder,
    series_key,
    series_subgroups,
    windowed,
)
from hemo_model.data.layout import LABELS_FILE, SPLITS, DataError, read_label_rows
from hemo_model.data.rsna import MAPPING_COLUMNS, mapping_rows, read_labels, read_mapping
from hemo_model.data.series_index import (
    SERIES_COLUMNS,
    SERIES_FILE,
    SeriesRecord,
    index_rows,
    patient_key,
    pixel_fingerprint,
    read_series_index,
)
from hemo_model.data.subgroups import SUBGROUPS_FILE, read_subgroups, subgroup_rows
from hemo_pipeline.services import dicom_output, tracking
from hemo_pipeline.services.dicom_output import DEFAULT_SALT_FILE, existing_patients, resolve_salt, staged
from hemo_pipeline.services.dicomweb import check_study_uids, fetch, limits_from, parse_service_root
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.files import write_csv_atomic, write_json_atomic
from hemo_pipeline.services.step_args import add_settings_arguments, settings_from

DEFAULT_WINDOWS = "brain"
PLACEHOLDER_STUDIES = 10
"""More head-CT studies than this under one patient key in one import is worth a warning."""
SAME_PIXELS = "same_pixels_as_another_series"
"""Series skipped because another series of this import has exactly the same pixels (sent twice
under two SeriesInstanceUIDs): one copy is written, so it can sit in one role only."""
BURNED_IN = "burned_in_annotation"
"""Series skipped because a file of theirs declares BurnedInAnnotation (pixel PHI)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dicom", type=Path, help="folder of DICOM files (any nesting; .dcm or no extension)")
    source.add_argument("--dicomweb", metavar="URL", help="DICOMweb service root, e.g. https://pacs:8042/dicom-web "
                        "(credentials: HEMO_DICOMWEB_TOKEN, or HEMO_DICOMWEB_USERNAME/HEMO_DICOMWEB_PASSWORD)")
    parser.add_argument("--study", action="append", default=[], metavar="UID",
                        help="with --dicomweb: a StudyInstanceUID to import (repeatable)")
    parser.add_argument("--modality", default="CT", help="with --dicomweb: series modality to fetch (default CT)")
    parser.add_argument("--since", metavar="YYYYMMDD", help="with --dicomweb and no --study: studies from this date on")
    parser.add_argument("--allow-http", action="store_true",
                        help="with --dicomweb: allow a plain http:// server (unencrypted; a trusted network only)")
    parser.add_argument("--max-series", type=int, metavar="N",
                        help="with --dicomweb: refuse a search that finds more than N series (default 1000)")
    parser.add_argument("--max-response-bytes", metavar="SIZE",
                        help="with --dicomweb: byte cap of one server response, e.g. 4GiB (default 2GiB, or "
                        "HEMO_DICOMWEB_MAX_BYTES)")
    parser.add_argument("--out", type=Path, default=Path("data"), help="data folder in DLCV layout (default data)")
    parser.add_argument("--labels", type=Path, help="RSNA label file (ID_<image>_<type>,Label); implies --split train")
    parser.add_argument("--split", choices=["train", "test"], help="where the series go (default: train with "
                        "--labels, else test)")
    parser.add_argument("--windows", default=DEFAULT_WINDOWS,
                        help="CT windows: 'brain' (JPEG, the method's input) or 'brain,subdural,bone' (RGB PNG)")
    parser.add_argument("--reject-irregular", action="store_true",
                        help="leave out series with a gap, uneven spacing, mixed sizes or a slice count out of bounds")
    parser.add_argument("--mapping", type=Path, help="write a local CSV from slice files back to their DICOM UIDs "
                        "(needed for RSNA submissions; never inside --out)")
    parser.add_argument("--salt-file", type=Path, default=DEFAULT_SALT_FILE,
                        help=f"salt for the series hashes, created if missing (default {DEFAULT_SALT_FILE}; "
                        "HEMO_DICOM_SALT overrides)")
    parser.add_argument("--new-salt", action="store_true", help="make a new salt although --out already holds "
                        "patients (only when none of them came from an earlier import: it renames re-imported series)")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="where import.json goes")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the import (counts only) to MLflow")
    add_settings_arguments(parser)


@dataclass
class Plan:
    """What the command line asks for, checked before anything is read."""

    split: str
    windows: list[str]
    min_slices: int
    max_slices: int
    reject_irregular: bool
    max_pixels: int
    """Pixel budget of one image (data.max_image_size squared), checked from the header."""
    service: Any = None
    """The checked DICOMweb service root (hemo_pipeline.services.dicomweb.ServiceRoot), None for a folder."""
    limits: Any = None
    """hemo_pipeline.services.dicomweb.Limits for a DICOMweb import."""


@dataclass
class Outcome:
    """Counts for the summary and the report (never a name, path inside the input, or UID)."""

    files: int = 0
    files_skipped: Counter = field(default_factory=Counter)
    series_found: int = 0
    series_skipped: Counter = field(default_factory=Counter)
    series_issues: Counter = field(default_factory=Counter)
    series_kept: int = 0
    slices: int = 0
    duplicates_dropped: int = 0
    labels_any_mismatch: int = 0
    patients: set[str] = field(default_factory=set)
    """Patient keys of the series kept (only their number leaves this object)."""
    without_patient_id: int = 0
    """Series kept without a PatientID: each is its own patient."""
    most_studies: int = 0
    """The most studies one patient key holds in this import (a placeholder PatientID shows here)."""
    unkeyed_earlier: int = 0
    """Folders already in --out without a series.csv row (an earlier release's import, or `hemo synth`)."""


def _plan(args: argparse.Namespace, settings: Any) -> Plan:
    windows = [w.strip() for w in args.windows.split(",") if w.strip()]
    unknown = [w for w in windows if w not in WINDOWS]
    if unknown or len(windows) not in (1, 3) or len(set(windows)) != len(windows):
        raise UserError(f"--windows {args.windows!r}: give one window (a gray JPEG) or three (an RGB PNG) of "
                        f"{', '.join(WINDOWS)}, e.g. --windows brain or --windows brain,subdural,bone")
    split = args.split or ("train" if args.labels else "test")
    if split == "train" and not args.labels:
        raise UserError("--split train needs --labels (an RSNA label file); unlabelled series go to --split test")
    if split == "test" and args.labels:
        raise UserError("--labels with --split test: test series carry no labels; drop one of the two")
    if args.dicomweb and args.since is None and not args.study:
        raise UserError("--dicomweb needs --study UID (repeatable) or a query: --modality CT --since YYYYMMDD")
    if args.dicom and (args.study or args.since):
        raise UserError("--study/--since select series on a DICOMweb server; use them with --dicomweb, not --dicom")
    service, limits = _dicomweb_plan(args)
    if args.dicom is not None and not args.dicom.is_dir():
        raise UserError(f"--dicom {args.dicom} is not a folder; pass the folder that holds the DICOM files")
    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} exists and is not a folder; pass the data folder (created if missing)")
    if args.mapping is not None:
        for what, folder in (("data", args.out), ("reports", args.reports)):
            if args.mapping.resolve().is_relative_to(folder.resolve()):
                raise UserError(f"--mapping {args.mapping} is inside the {what} folder {folder}: the mapping holds "
                                "DICOM UIDs and must stay outside the pipeline's folders; write it elsewhere")
    cfg = settings.validate
    return Plan(split, windows, cfg.min_slices, cfg.max_slices, args.reject_irregular,
                settings.data.max_image_size ** 2, service, limits)


def _dicomweb_plan(args: argparse.Namespace) -> tuple[Any, Any]:
    """The service root and limits checked before anything is read or requested (a malformed URL
    is a user error, exit 2, with the URL redacted)."""
    if not args.dicomweb:
        return None, None

    limits = limits_from(args.max_series, args.max_response_bytes, args.allow_http)
    service = parse_service_root(args.dicomweb, limits.allow_http)
    check_study_uids(args.study)
    return service, limits


def _select(series_list: list, plan: Plan, labels: Any, outcome: Outcome) -> list[tuple[Any, list | None]]:
    """The series to write, each with its per-slice labels (None for test)."""
    chosen = []
    for series in series_list:
        if series.burned_in:  # text in the pixels (names, dates): no header rule can remove it
            outcome.series_skipped[BURNED_IN] += 1
            continue
        outcome.duplicates_dropped += series.duplicates_dropped
        outcome.series_issues.update(series.issues)
        blocking = [i for i in SERIES_ISSUES if i in series.issues and (plan.reject_irregular or i in ALWAYS_REJECTED)]
        if blocking:
            outcome.series_skipped[blocking[0]] += 1
            continue
        slice_labels = None
        if labels is not None:
            slice_labels = [labels.get(h.sop_uid) for h in series.slices]
            if any(lab is None for lab in slice_labels):
                outcome.series_skipped["unlabelled"] += 1
                continue
        chosen.append((series, slice_labels))
    return chosen


def _write(work: Path, chosen: list, plan: Plan, salt: str, outcome: Outcome) -> tuple[list, list]:
    """Write every chosen series into the staging folder, its row into series.csv (its patient's
    key, its pixel fingerprint) and into subgroups.csv (scanner, thickness, matrix); return
    train.csv rows and mapping rows. A series whose pixels are already in the data folder under
    another name is refused (a re-import with another salt); the same pixels twice in this import are written once."""
    taken = existing_patients(work)
    # of two series with the same pixels the first is written: one with a PatientID keeps its patient
    chosen = sorted(chosen, key=lambda pair: not pair[0].patient_id)
    keys = [series_key(series.uid, salt) for series, _ in chosen]
    for key in keys:  # every name checked before the first image is written
        if keys.count(key) > 1:
            raise UserError(f"two series hash to {key}, a 1-in-a-trillion salt collision: set a new salt (delete the "
                            "salt file or change HEMO_DICOM_SALT) and import into a fresh data folder")
        if f"ID_{key}" in taken:
            raise UserError(f"ID_{key} already exists in the data folder (the same series imported before with the "
                            "same salt); nothing was written. Import into a new --out, or remove that patient first "
                            "(its folder and its rows in train.csv and series.csv)")
    on_disk = {d.name for split in SPLITS if (work / split).is_dir() for d in (work / split).iterdir() if d.is_dir()}
    # checked in run() before staging; a row whose folder was removed is dropped (its scan may come back)
    index = {d: r for d, r in read_series_index(work).items() if d in on_disk}
    groups = {d: g for d, g in read_subgroups(work).items() if d in on_disk}
    outcome.unkeyed_earlier = len(on_disk - set(index))
    owner = {r.pixels_sha256: r.dirname for r in index.values() if r.pixels_sha256}
    earlier = set(index)  # folders of earlier imports; the rest of ``owner`` is this import's
    studies: dict[str, set[str]] = {}
    label_rows, mapping_rows = [], []
    for key, (series, slice_labels) in zip(keys, chosen):
        volume = read_series_hu(series)  # all slices decoded before any is written
        if volume is None:
            outcome.series_skipped[UNDECODABLE] += 1
            continue
        dirname = f"ID_{key}"
        pixels = pixel_fingerprint(volume)
        if pixels in owner:
            if owner[pixels] in earlier:
                raise UserError(f"a series to import has the same pixels as {owner[pixels]} already in the data folder "
                                "under another name (imported before with another DICOM salt?); nothing was written. "
                                "Import with the data set's own salt (its salt file or HEMO_DICOM_SALT), or remove "
                                f"{owner[pixels]} first")
            outcome.series_skipped[SAME_PIXELS] += 1
            continue
        owner[pixels] = dirname
        patient = patient_key(series.patient_id, salt) if series.patient_id else dirname
        outcome.patients.add(patient)
        studies.setdefault(patient, set()).add(series.study_uid)
        outcome.without_patient_id += not series.patient_id
        index[dirname] = SeriesRecord(dirname, patient, pixels)
        groups[dirname] = series_subgroups(series)
        folder = work / plan.split / dirname
        folder.mkdir(parents=True)
        for k, (header, hu) in enumerate(zip(series.slices, volume)):
            name = dicom_output.save_slice(folder / f"{key}_{k}", windowed(hu, plan.windows))
            mapping_rows.append([dirname, name, patient, series.study_uid, series.uid, header.sop_uid])
            if slice_labels is not None:
                label_rows.append([dirname, name, *slice_labels[k]])
        outcome.series_kept += 1
        outcome.slices += len(series.slices)
    write_csv_atomic(work / SERIES_FILE, list(SERIES_COLUMNS), index_rows(index.values()))
    write_csv_atomic(work / SUBGROUPS_FILE, *subgroup_rows(groups))
    outcome.most_studies = max((len(v) for v in studies.values()), default=0)
    return label_rows, mapping_rows


def _merge_labels(work: Path, rows: list) -> None:
    path = work / LABELS_FILE
    existing: list[list[str]] = []
    if path.is_file():
        header, old = read_label_rows(path)
        if header != list(LABEL_COLUMNS):
            raise UserError(f"{LABELS_FILE} in --out has header {','.join(header)!r}, not "
                            f"{','.join(LABEL_COLUMNS)}; fix it (hemo validate) before importing into that folder")
        existing = [[r.values[c] for c in LABEL_COLUMNS] for r in old]
    write_csv_atomic(path, list(LABEL_COLUMNS), existing + rows)


def _write_mapping(path: Path, rows: list) -> None:
    """UIDs: readable by the owner only, from the first byte (the temp file is 0600 before it is
    written and renamed; there is no moment at which others could read it)."""
    old = list(mapping_rows(read_mapping(path))) if path.is_file() else []
    write_csv_atomic(path, list(MAPPING_COLUMNS), old + rows, mode=0o600)


def report_payload(outcome: Outcome, plan: Plan, source: str, seconds: float, fetch: Any) -> dict[str, Any]:
    return {
        "source": source,
        "split": plan.split,
        "windows": plan.windows,
        "format": "jpg" if len(plan.windows) == 1 else "png",
        "slice_bounds": [plan.min_slices, plan.max_slices],
        "reject_irregular": plan.reject_irregular,
        "files": outcome.files,
        "files_skipped": dict(sorted(outcome.files_skipped.items())),
        "series_found": outcome.series_found,
        "series_kept": outcome.series_kept,
        "patients_kept": len(outcome.patients),
        "series_without_patient_id": outcome.without_patient_id,
        "most_studies_per_patient": outcome.most_studies,
        "earlier_folders_without_patient_key": outcome.unkeyed_earlier,
        "series_skipped": dict(sorted(outcome.series_skipped.items())),
        "series_issues": dict(sorted(outcome.series_issues.items())),
        "duplicate_positions_dropped": outcome.duplicates_dropped,
        "slices_written": outcome.slices,
        "labels_any_mismatch": outcome.labels_any_mismatch,
        "dicomweb": None if fetch is None else {"series": fetch.series, "instances": fetch.instances,
                                                "searches": fetch.searches, "bytes": fetch.bytes,
                                                "seconds": round(fetch.seconds, 3)},
        "seconds": round(seconds, 3),
        "slices_per_second": round(outcome.slices / seconds, 1) if seconds > 0 else None,
    }


def _counts(counter: Counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items())) or "none"


def summary_lines(report: dict[str, Any], out: Path, salt_source: str, mapping: Path | None) -> list[str]:
    kind = "RGB PNG, " + "/".join(report["windows"]) if report["format"] == "png" else \
        f"{report['windows'][0]} window, JPEG"
    lines = [f"import-dicom: {report['series_kept']} series -> {out / report['split']} ({kind}): "
             f"{report['slices_written']} slices in {report['seconds']:.2f} s "
             f"({report['slices_per_second'] or 0:.1f} slices/s)"]
    if report["dicomweb"]:
        web = report["dicomweb"]
        lines.append(f"  dicomweb: {web['series']} series / {web['instances']} instances retrieved in "
                     f"{web['seconds']:.2f} s (included above; {web['searches']} search "
                     f"page{'' if web['searches'] == 1 else 's'}, {web['bytes'] / 2**20:.1f} MiB received)")
    used = report["files"] - sum(report["files_skipped"].values())
    lines.append(f"  files: {report['files']} read, {used} used; skipped: {_counts(Counter(report['files_skipped']))}")
    lines.append(f"  series: {report['series_found']} found, {report['series_kept']} kept; skipped: "
                 f"{_counts(Counter(report['series_skipped']))}; irregular: {_counts(Counter(report['series_issues']))}"
                 f"; duplicate positions dropped: {report['duplicate_positions_dropped']}")
    if report["labels_any_mismatch"]:
        lines.append(f"  labels: 'any' disagreed with the five types for {report['labels_any_mismatch']} images "
                     "(it is derived; the stored value is ignored)")
    lines.append(f"  patients: {report['patients_kept']} among the series kept (a salted hash of PatientID keys each; "
                 "every scan of a patient shares its role)"
                 + (f"; {report['series_without_patient_id']} series without PatientID are each their own patient"
                    if report["series_without_patient_id"] else ""))
    if report["most_studies_per_patient"] > PLACEHOLDER_STUDIES:
        lines.append(f"  warning: one patient key holds {report['most_studies_per_patient']} studies: a placeholder "
                     "PatientID (e.g. ANONYMOUS) would put all of them in one role; check the export's PatientID")
    if report["earlier_folders_without_patient_key"]:
        lines.append(f"  warning: {report['earlier_folders_without_patient_key']} folders already in the data folder "
                     "have no patient key (an earlier release's import, or hemo synth): each stays its own patient, so "
                     "a new scan of the same person can land in another role; re-import everything into a fresh "
                     "folder to key them")
    lines.append(f"  names: salted hashes of SeriesInstanceUID (salt: {salt_source}); mapping to UIDs: "
                 + (str(mapping) if mapping else "not written (--mapping FILE)"))
    return lines


def run(args: argparse.Namespace) -> int:

    settings = settings_from(args)
    plan = _plan(args, settings)
    try:
        read_series_index(args.out)  # a malformed index is refused before anything is read or decoded
        read_subgroups(args.out)
    except DataError as exc:
        raise UserError(str(exc)) from exc
    salt, salt_source = resolve_salt(args.salt_file, {"data": args.out, "reports": args.reports},
                                     existing=len(existing_patients(args.out)), allow_new=args.new_salt)
    started = time.perf_counter()
    labels = read_labels(args.labels) if args.labels else None
    outcome = Outcome(labels_any_mismatch=labels.any_mismatch if labels else 0)
    fetched, download = None, None
    source = "dicomweb" if args.dicomweb else "folder"
    try:
        if args.dicomweb:
            download = Path(tempfile.mkdtemp(prefix="hemo-dicomweb-"))  # 0700, outside every project folder
            fetched = fetch(plan.service, download, args.study, args.modality, args.since, plan.limits)
            folder = download
        else:
            folder = args.dicom
        try:
            scan = scan_folder(folder, plan.max_pixels)
        except DataError as exc:
            raise UserError(str(exc)) from exc
        outcome.files, outcome.files_skipped = scan.files, scan.skipped
        series_list = group_series(scan.slices, plan.min_slices, plan.max_slices, scan.burned_in_series)
        outcome.series_found = len(series_list)
        chosen = _select(series_list, plan, labels, outcome)
        with staged(args.out) as work:
            label_rows, mapping_rows = _write(work, chosen, plan, salt, outcome)
            if not outcome.series_kept:  # leaves the block by exception: the data folder stays as it was
                report = report_payload(outcome, plan, source, time.perf_counter() - started, fetched)
                write_json_atomic(args.reports / "import.json", report)
                print("\n".join(summary_lines(report, args.out, salt_source, None)))
                raise UserError(f"no series to import: {len(series_list)} found in {outcome.files} files (counts above "
                                f"and in {args.reports / 'import.json'}); nothing was written to {args.out}")
            if plan.split == "train":
                _merge_labels(work, label_rows)
    finally:
        if download is not None:
            shutil.rmtree(download, ignore_errors=True)
    if args.mapping is not None:
        _write_mapping(args.mapping, mapping_rows)
    seconds = time.perf_counter() - started
    report = report_payload(outcome, plan, source, seconds, fetched)
    write_json_atomic(args.reports / "import.json", report)
    if not args.no_mlflow:
        _log_to_mlflow(settings, report, args.reports / "import.json")
    print("\n".join(summary_lines(report, args.out, salt_source, args.mapping)))
    return 0


def _log_to_mlflow(settings: Any, report: dict[str, Any], path: Path) -> None:
    """Counts and settings only: the report holds no name, path or UID."""

    with tracking.step_run("import-dicom", settings):
        mlflow.log_params({"source": report["source"], "split": report["split"], "windows": ",".join(report["windows"]),
                           "reject_irregular": report["reject_irregular"],
                           "slice_bounds": f"{report['slice_bounds'][0]}..{report['slice_bounds'][1]}"})
        metrics = {k: float(report[k]) for k in ("files", "series_found", "series_kept", "slices_written",
                                                   "duplicate_positions_dropped", "seconds")}
        metrics.update({f"files_skipped_{k}": float(v) for k, v in report["files_skipped"].items()})
        metrics.update({f"series_skipped_{k}": float(v) for k, v in report["series_skipped"].items()})
        if report["slices_per_second"]:
            metrics["slices_per_second"] = float(report["slices_per_second"])
        mlflow.log_metrics(metrics)
        mlflow.log_artifact(str(path), artifact_path="import")
