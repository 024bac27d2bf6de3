"""Send the scored exams back where radiologists read: DICOM SR, evidence overlays and FHIR, pushed to the PACS.

For every exam of `hemo score`'s exams.csv, with the private UID mapping `hemo import-dicom
--mapping` keeps and the source DICOM folder (for the study's filing identifiers and the evidence
slices' pixels), writes under --out (outside the project: the objects carry the patient's
identifiers, as a PACS needs them):
  <dirname>/sr.dcm                 TID 1500 Comprehensive SR: probability per type and any, the
                                   triage bin, the evidence slices as references to the source
                                   instances, the model and its registry version
  <dirname>/sc_<type>.dcm          Secondary Capture of the type's top evidence slice with its
                                   occlusion-sensitivity map (from `hemo score --overlays DIR`,
                                   given here as --overlays), "NOT FOR DIAGNOSIS" burnt in
  <dirname>/diagnostic_report.json FHIR R4B transaction Bundle: DiagnosticReport + 6 Observations
The source instances come from --dicom (a folder) or --dicomweb URL (the PACS they are filed in:
the scored series are retrieved with WADO-RS into a private folder under --out for the run).
With --push URL the DICOM objects are stored on a DICOMweb server (STOW-RS; the import's https,
credential, redirect and size rules), one request per exam. UIDs and FHIR ids are derived from the
source series and the model version: running again writes the same objects and adds no copies
to the PACS (Orthanc keeps the first copy unless its OverwriteInstances is on). The project gets
counts only (reports/report.json, MLflow); no UID, name or header value.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import json
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pydicom

from hemo_model.data.dicom import hounsfield, iter_files, quiet, windowed
from hemo_model.data.layout import PATIENT_DIR, DataError
from hemo_model.data.rsna import read_mapping
from hemo_pipeline.services import tracking
from hemo_pipeline.services.dicom_output import is_inside
from hemo_pipeline.services.dicom_results import (
    BINS,
    DEFAULT_UID_ROOT,
    FINDINGS,
    RESULT_COLUMNS,
    ExamResult,
    ModelInfo,
    build_sc,
    build_sr,
    check_uid_root,
    enlarge,
    overlay_pixels,
    zoom_for,
)
from hemo_pipeline.services.dicomweb import (
    ServiceRoot,
    Stored,
    limits_from,
    parse_service_root,
    retrieve_series,
    store,
)
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.fhir_results import diagnostic_report_bundle
from hemo_pipeline.services.files import atomic_file, write_json_atomic
from hemo_pipeline.services.results import publish
from hemo_pipeline.services.score_files import EXAM_CSV_COLUMNS, load_saliency, saliency_file
from hemo_pipeline.services.step_args import add_settings_arguments, settings_from

PRIVATE = 0o600
"""The objects name the patient: readable by their owner only, as the import's mapping is."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--exams", type=Path, default=Path("outputs/exams.csv"), help="exams.csv of `hemo score`")
    parser.add_argument("--models", type=Path,
                        help="the score's _models.json (default: beside --exams, as `hemo score` names it)")
    parser.add_argument("--mapping", type=Path, required=True,
                        help="the private mapping of `hemo import-dicom --mapping` (folders and slices -> UIDs)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dicom", type=Path,
                        help="the source DICOM folder the series were imported from (any nesting, any names)")
    source.add_argument("--dicomweb", metavar="URL",
                        help="or the DICOMweb service root that holds them (WADO-RS, the import's rules): the scored "
                             "series are retrieved into a private folder under --out for the run, then removed")
    parser.add_argument("--overlays", type=Path, help="the folder of `hemo score --overlays` (its saliency maps)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the objects; must be outside the project")
    parser.add_argument("--push", metavar="URL", help="DICOMweb service root to store the DICOM objects on (STOW-RS)")
    parser.add_argument("--allow-http", action="store_true",
                        help="allow a plain-http --push or --dicomweb (a PACS on 127.0.0.1)")
    parser.add_argument("--uid-root", default=DEFAULT_UID_ROOT,
                        help=f"UID root of the derived UIDs (your organisation's; default pydicom's {DEFAULT_UID_ROOT})")
    parser.add_argument("--reports", type=Path, default=Path("reports"), help="where report.json (counts) goes")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the counts to MLflow")
    add_settings_arguments(parser)


def models_file(exams: Path) -> Path:
    """`hemo score --out X.csv` writes X_models.json and, for X = predictions, exams.csv."""
    stem = "predictions" if exams.name == "exams.csv" else exams.name.removesuffix("_exams.csv").removesuffix(".csv")
    return exams.with_name(f"{stem}_models.json")


def _model(path: Path, uid_root: str) -> ModelInfo:
    try:
        used = json.loads(path.read_text())["models"]
        version = "+".join(str(m["version"]) for m in used)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{path} cannot be read as `hemo score`'s _models.json ({type(exc).__name__}); pass --models "
                        "with the file of the score run that wrote --exams") from exc
    if not all(part.isdigit() for part in version.split("+")):
        raise UserError(f"{path}: no registry version of the scoring model; report results of `hemo score` with a "
                        "registered model (models:/...)")
    return ModelInfo(version=version, uid_root=uid_root)


def _exams(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if tuple(reader.fieldnames or ()) != EXAM_CSV_COLUMNS:
                raise UserError(f"{path}: not an exams file of `hemo score` (header must be {','.join(EXAM_CSV_COLUMNS)})")
            rows = list(reader)
    except OSError as exc:
        raise UserError(f"{path} cannot be read ({exc.strerror}); run `hemo score` first") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path} is not a readable CSV ({type(exc).__name__}); re-run `hemo score`") from exc
    if not rows:
        raise UserError(f"{path} lists no exam; score a folder with series first (`hemo score`)")
    return rows


def _resolve(rows: list[dict[str, str]], mapping: dict, path: Path) -> list[ExamResult]:
    """Each row's evidence slices as SOPInstanceUIDs; a slice the mapping lacks is refused."""
    exams = []
    for line, row in enumerate(rows, start=2):
        if None in row.values() or None in row or PATIENT_DIR.fullmatch(row["dirname"]) is None:
            raise UserError(f"{path} row {line}: not a row of `hemo score` (a field missing or too many, or not a "
                            "series folder ID_<hash>); re-run `hemo score`")
        if row["triage"] not in BINS or row["calibrated"] not in ("0", "1"):
            raise UserError(f"{path} row {line}: triage must be one of {', '.join(BINS)} and calibrated 0 or 1; "
                            "re-run `hemo score`")
        evidence = {}
        for column in RESULT_COLUMNS:
            uids = []
            for name in filter(None, row[f"evidence_{column}"].split(";")):
                entry = mapping.get((row["dirname"], name))
                if entry is None:
                    raise UserError(f"{path} row {line}: {row['dirname']}/{name} has no row in the --mapping file; pass "
                                    "the mapping `hemo import-dicom --mapping` wrote for the scored data")
                uids.append(entry["SOPInstanceUID"])
            evidence[column] = uids
        if not evidence["any"]:
            raise UserError(f"{path} row {line}: {row['dirname']} has no evidence slices; re-run `hemo score`")
        evidence = {c: v or evidence["any"] for c, v in evidence.items()}
        try:
            probabilities = {c: float(row[c]) for c in RESULT_COLUMNS}
        except ValueError as exc:
            raise UserError(f"{path} row {line}: a probability is not a number; re-run `hemo score`") from exc
        if not all(0.0 <= p <= 1.0 for p in probabilities.values()):  # NaN fails too
            raise UserError(f"{path} row {line}: probabilities must lie in [0, 1]; re-run `hemo score`")
        exams.append(ExamResult(row["dirname"], probabilities, row["triage"], row["calibrated"] == "1", evidence))
    return exams


@contextlib.contextmanager
def _source_folder(dicom: Path | None, pacs: ServiceRoot | None, exams: list[ExamResult], mapping: dict, out: Path,
                   allow_http: bool) -> Iterator[tuple[Path, str]]:
    """The folder the source instances are read from, and how to name it in a message: --dicom
    as given, or the scored series retrieved from --dicomweb into a private folder under --out
    (0700, beside the objects that name the same patients), removed when the run ends."""
    if pacs is None:
        assert dicom is not None  # argparse: exactly one of --dicom / --dicomweb
        yield dicom, f"--dicom {dicom}"
        return
    scored = {exam.dirname for exam in exams}
    series = sorted({(entry["StudyInstanceUID"], entry["SeriesInstanceUID"])
                     for (dirname, _), entry in mapping.items() if dirname in scored})
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=out, prefix=".sources-") as folder:  # mkdtemp: 0700
        fetched = retrieve_series(pacs, series, Path(folder), limits_from(None, None, allow_http))
        print(f"report: retrieved {fetched.series} series, {fetched.instances} instances from {pacs.shown} "
              f"(WADO-RS, {fetched.seconds:.1f} s)")
        yield Path(folder), f"the series retrieved from {pacs.shown}"


def _sources(folder: Path, wanted: set[str]) -> dict[str, Path]:
    """SOPInstanceUID -> file for the wanted instances under ``folder`` (headers only are read)."""
    found: dict[str, Path] = {}
    for path in iter_files(folder):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
        except Exception:  # noqa: BLE001 - not DICOM, unreadable: not one of ours, and never named
            continue
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid in wanted:
            found[uid] = path
    return found


def _save(ds: Any, path: Path) -> None:
    with atomic_file(path, mode=PRIVATE, binary=True) as handle:
        ds.save_as(handle, enforce_file_format=True)


def _overlay(exam: ExamResult, column: str, maps: dict, files: dict[str, Path], model: ModelInfo) -> Any | None:
    """The Secondary Capture of ``column``'s map over the slice it explains; None without a map."""
    if (exam.dirname, column) not in maps:
        return None  # score draws a map only for the types it flags
    saliency, uid = maps[(exam.dirname, column)]
    source = pydicom.dcmread(files[uid])
    gray = windowed(hounsfield(source), ["brain"])
    zoom = zoom_for(gray.shape)
    caption = f"{FINDINGS[column].meaning}: P = {exam.probabilities[column]:.2f} (v{model.version})"
    return build_sc(source, overlay_pixels(enlarge(gray, zoom), saliency, caption), column,
                    exam.probabilities[column], model, zoom)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    out: Path = args.out
    # the project is the working folder, or HEMO_PROJECT_DIR where an orchestrator runs the step in a run folder
    if is_inside(out, Path.cwd()) or is_inside(out, tracking.project_dir()):
        raise UserError(f"--out {out} is inside the project; the objects carry patient identifiers: write them "
                        "outside it (e.g. next to the private mapping)")
    push = parse_service_root(args.push, args.allow_http) if args.push else None
    pacs = parse_service_root(args.dicomweb, args.allow_http) if args.dicomweb else None
    try:
        uid_root = check_uid_root(args.uid_root)
    except ValueError:
        raise UserError(f"--uid-root {args.uid_root!r} is not a UID root: digits separated by dots, no leading zeros, "
                        "at most 53 characters (your organisation's registered root)") from None
    model = _model(args.models or models_file(args.exams), uid_root)
    try:
        mapping = read_mapping(args.mapping)
    except DataError as exc:
        raise UserError(str(exc)) from exc
    exams = _resolve(_exams(args.exams), mapping, args.exams)
    if args.dicom is not None and not args.dicom.is_dir():
        raise UserError(f"--dicom {args.dicom} is not a folder; pass the source DICOM folder the series came from")
    started = time.perf_counter()
    wanted = {uid for exam in exams for uids in exam.evidence.values() for uid in uids}
    maps = _saliency_maps(exams, args.overlays, mapping)
    issued = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    counts = {"exams": len(exams), "sr": 0, "sc": 0, "fhir": 0}
    pushed = Stored()
    limits = limits_from(None, None, args.allow_http) if push is not None else None
    with _source_folder(args.dicom, pacs, exams, mapping, out, args.allow_http) as (folder, named):
        files = _sources(folder, wanted | {uid for _, uid in maps.values()})
        missing = wanted - set(files)
        if missing:
            raise UserError(f"{len(missing)} evidence slices are not in {named}; pass the source the scored series "
                            "were imported from")
        for number, exam in enumerate(exams):
            objects = _exam_objects(exam, files, maps if args.overlays is not None else None, model, issued,
                                    out / exam.dirname)
            counts["sr"] += 1
            counts["sc"] += len(objects) - 1
            counts["fhir"] += 1
            if push is not None and limits is not None:  # one request per exam: bounded; what is stored stays stored
                stored = store(push, objects, limits, warn=number == 0)
                pushed.instances, pushed.failed = pushed.instances + stored.instances, pushed.failed + stored.failed
    seconds = time.perf_counter() - started
    summary = {**counts, "model_version": model.version, "pushed": pushed.instances, "push_failed": pushed.failed,
               "seconds": round(seconds, 2)}
    write_json_atomic(args.reports / "report.json", summary)
    if not args.no_mlflow:
        with tracking.step_run("report", settings):
            mlflow.log_metrics({k: float(v) for k, v in summary.items() if isinstance(v, (int, float))})
            mlflow.log_param("model_version", model.version)
    print(f"report: {counts['exams']} exams -> {out}: {counts['sr']} SR, {counts['sc']} Secondary Captures, "
          f"{counts['fhir']} FHIR DiagnosticReports (model v{model.version}, {seconds:.1f} s)"
          + (f"; stored {pushed.instances} objects on {push.shown} (STOW-RS)"
             + (f", {pushed.failed} refused" if pushed.failed else "") if push else ""))
    publish("report", summary)  # counts only: the objects and the folder stay private
    if pushed.failed:
        raise UserError(f"the DICOMweb server refused {pushed.failed} objects; its log says why (the objects are in "
                        f"{out})")
    return 0


def _exam_objects(exam: ExamResult, files: dict[str, Path], maps: dict | None, model: ModelInfo, issued: str,
                  folder: Path) -> list[Any]:
    """Build one exam's SR, Secondary Captures and FHIR bundle, then write them (an SC of an earlier
    run that this one does not make is removed); the DICOM objects, for a push. Header values are
    read under :func:`quiet` (pydicom's warnings quote them) and never reach a message."""
    try:
        with quiet():
            sources = {uid: pydicom.dcmread(files[uid], stop_before_pixels=True)
                       for uid in {u for uids in exam.evidence.values() for u in uids}}
            sr = build_sr(exam, sources, model)
            captures = {c: _overlay(exam, c, maps, files, model) for c in RESULT_COLUMNS[1:]} if maps is not None else {}
            first = sources[exam.evidence["any"][0]]
            bundle = diagnostic_report_bundle(
                exam.probabilities, exam.triage, exam.calibrated, {c: list(v) for c, v in exam.evidence.items()},
                str(first.StudyInstanceUID), str(first.SeriesInstanceUID), str(first.get("PatientID", "") or ""),
                str(sr.SOPInstanceUID), model.version, issued)
    except (ValueError, AttributeError, TypeError) as exc:  # a header highdicom or FHIR cannot take
        raise UserError(f"the source headers of {exam.dirname} cannot be turned into result objects "
                        f"({type(exc).__name__}; values are not shown); check that series' DICOM with dciodvfy") from exc
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    _save(sr, folder / "sr.dcm")
    made = [sr]
    for column, sc in captures.items():
        target = folder / f"sc_{column}.dcm"
        if sc is None:
            target.unlink(missing_ok=True)
            continue
        _save(sc, target)
        made.append(sc)
    with atomic_file(folder / "diagnostic_report.json", mode=PRIVATE) as handle:
        json.dump(bundle, handle, indent=1)
    return made


def _saliency_maps(exams: Iterable[ExamResult], overlays: Path | None, mapping: dict) -> dict:
    """``{(dirname, type): (map, SOPInstanceUID of the slice it explains)}``, each file read once; a
    map whose slice the mapping lacks is left out (no capture), a file that is not a map refused."""
    maps: dict = {}
    if overlays is None:
        return maps
    for exam in exams:
        for column in RESULT_COLUMNS[1:]:
            path = saliency_file(overlays, exam.dirname, column)
            if not path.is_file():
                continue
            try:
                saliency, slice_name = load_saliency(path)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
                raise UserError(f"{path} is not a saliency map of `hemo score --overlays` ({type(exc).__name__})"
                                "; pass the --overlays folder of the score run that wrote --exams") from exc
            entry = mapping.get((exam.dirname, slice_name))
            if entry is not None:
                maps[(exam.dirname, column)] = (saliency, entry["SOPInstanceUID"])
    return maps
