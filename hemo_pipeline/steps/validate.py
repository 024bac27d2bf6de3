"""Validate labels and slice sequences with Great Expectations before anything trains.

Checks train.csv (exact columns, 0/1 labels without gaps, unique well-formed IDs that match
their patient folder, safe paths), every patient sequence of train/ and test/ (22-40 slices,
indices 0..n-1 without gap or duplicate) and every image (inside the data folder, decodes,
8-bit grayscale, or RGB for model.input windows3, expected size; no file in train/ without a label
row), and series.csv, subgroups.csv and the lesion masks (masks/) where present. Each check is reported on its own line
naming the first offending patients/files. A JSON summary and GX Data Docs (HTML) are written to
--reports, each replaced whole (a temp file or folder, then a rename or exchange), so a failed or
interrupted run leaves the previous report. Exit 0 when all checks pass, 1 when any fails; the
data folder is never modified.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import mlflow
import pandas as pd
from great_expectations.checkpoint import UpdateDataDocsAction
from great_expectations.data_context.types.base import ProgressBarsConfig

from hemo_model import CLASSES, LABEL_COLUMNS
from hemo_pipeline.services import tracking
from hemo_pipeline.services.errors import ValidationFailed
from hemo_pipeline.services.files import write_json_atomic
from hemo_pipeline.services.folder_swap import replacing
from hemo_pipeline.services.step_args import add_settings_arguments, settings_from
from hemo_pipeline.services.validation_frames import build_frames

MAX_EXAMPLES = 5


@dataclass
class CheckResult:
    name: str
    frame: str
    success: bool
    failed: int
    total: int
    examples: list[str] = field(default_factory=list)
    hint: str = ""

    def line(self) -> str:
        if self.success:
            return f"PASS {self.name} ({self.total} checked)"
        examples = ", ".join(self.examples)
        return f"FAIL {self.name}: {self.failed} of {self.total} failed; first: {examples} -> {self.hint}"


@dataclass
class CheckSpec:
    """One rule: which frame, which GX expectation, and what the user should do if it fails."""

    name: str
    frame: str
    expectation: Any
    hint: str


def _series_specs() -> list[CheckSpec]:
    """Checks of series.csv (present when `hemo import-dicom` made the data set): a bad key or a
    scan listed twice would put one patient's scans in two roles, or one scan in two."""
    e = gx.expectations
    return [
        CheckSpec("series.well_formed", "series", e.ExpectColumnValuesToBeInSet(column="well_formed", value_set=[True]),
                  "series.csv rows must be ID_<hash>,<patient key>,<64 hex or empty> under the header "
                  "dirname,patient,pixels_sha256; restore the file (dvc checkout)"),
        CheckSpec("series.dirname.unique", "series", e.ExpectColumnValuesToBeUnique(column="dirname"),
                  "each series folder may have one row only; remove the duplicate rows"),
        CheckSpec("series.pixels.unique", "series", e.ExpectColumnValuesToBeUnique(column="pixels_sha256"),
                  "two folders hold the same scan (same pixels): remove one folder, its train.csv and series.csv rows"),
        CheckSpec("series.folder_exists", "series", e.ExpectColumnValuesToBeInSet(column="has_folder", value_set=[True]),
                  "a row names a folder that is in neither train/ nor test/; remove the row or restore the folder"),
    ]


def _subgroup_specs() -> list[CheckSpec]:
    """Checks of subgroups.csv (from `hemo import-dicom` or `hemo synth`): a bad row would report a
    figure for the wrong scanner or band, or `hemo evaluate` would refuse the file."""
    e = gx.expectations
    return [
        CheckSpec("subgroups.well_formed", "subgroups",
                  e.ExpectColumnValuesToBeInSet(column="well_formed", value_set=[True]),
                  "subgroups.csv rows must be ID_<hash> and one coarse value per column (letters, digits, spaces, "
                  "'._<>-'); fix the rows named or restore the file (dvc checkout)"),
        CheckSpec("subgroups.dirname.unique", "subgroups", e.ExpectColumnValuesToBeUnique(column="dirname"),
                  "each series folder may have one row only; remove the duplicate rows"),
        CheckSpec("subgroups.folder_exists", "subgroups",
                  e.ExpectColumnValuesToBeInSet(column="has_folder", value_set=[True]),
                  "a row names a folder that is in neither train/ nor test/; remove the row or restore the folder"),
    ]


def _mask_specs() -> list[CheckSpec]:
    """Checks of masks/ (lesion outlines, from `hemo synth` or a team's segmentations): a bad file
    would stop `hemo evaluate`'s pointing game, an outline of a class the slice is not labelled with
    would score the saliency maps against the wrong answer."""
    e = gx.expectations
    return [
        CheckSpec("masks.well_formed", "masks", e.ExpectColumnValuesToBeInSet(column="well_formed", value_set=[True]),
                  "each mask must be masks/ID_<hash>/<hash>_<k>.png, a regular file (no link), an 8-bit grayscale "
                  "square PNG with values 0-31 (bit 1 ich, 2 ivh, 4 sah, 8 sdh, 16 edh); re-export or remove it"),
        CheckSpec("masks.labelled", "masks", e.ExpectColumnValuesToBeInSet(column="labelled", value_set=[True]),
                  "the mask's slice has no train.csv row (masks are for labelled slices only); remove the mask or "
                  "add the slice's row"),
        CheckSpec("masks.agree_with_labels", "masks",
                  e.ExpectColumnValuesToBeInSet(column="agrees_with_labels", value_set=[True]),
                  "the mask outlines a class its slice is not labelled with; fix the label or the mask"),
    ]


def _specs(header: list[str], min_slices: int, max_slices: int, sizes: list[str],
           model_input: str = "gray") -> list[CheckSpec]:
    """``sizes``: the accepted "WxH" slice sizes (one: every slice must have it)."""
    e = gx.expectations
    specs = [
        CheckSpec(
            "labels.columns",
            "header",
            e.ExpectTableColumnsToMatchOrderedList(column_list=list(LABEL_COLUMNS)),
            f"train.csv header must be exactly {','.join(LABEL_COLUMNS)}",
        ),
    ]
    for column in ("dirname", "ID", *CLASSES):
        if column in header:
            specs.append(
                CheckSpec(
                    f"labels.{column}.not_missing",
                    "labels",
                    e.ExpectColumnValuesToNotBeNull(column=column),
                    f"fill the empty '{column}' cells",
                )
            )
    for column in CLASSES:
        if column in header:
            specs.append(
                CheckSpec(
                    f"labels.{column}.binary",
                    "labels",
                    e.ExpectColumnValuesToBeInSet(column=column, value_set=["0", "1"]),
                    f"'{column}' labels must be 0 or 1",
                )
            )
    if "ID" in header:
        specs.append(
            CheckSpec("labels.ID.unique", "labels", e.ExpectColumnValuesToBeUnique(column="ID"),
                      "each slice may appear in one row only; remove the duplicate rows")
        )
    specs += [
        CheckSpec("labels.safe_paths", "labels", e.ExpectColumnValuesToBeInSet(column="safe_path", value_set=[True]),
                  "dirname and ID must be plain names: no '..', '/', '\\' or absolute paths"),
        CheckSpec("labels.ID.format", "labels", e.ExpectColumnValuesToBeInSet(column="id_well_formed", value_set=[True]),
                  "ID must look like <hash>_<k>.jpg"),
        CheckSpec("labels.ID.matches_dirname", "labels",
                  e.ExpectColumnValuesToBeInSet(column="id_matches_dirname", value_set=[True]),
                  "the <hash> in ID must equal the one in dirname ID_<hash>"),
        CheckSpec("sequences.length", "patients",
                  e.ExpectColumnValuesToBeBetween(column="n_slices", min_value=min_slices, max_value=max_slices),
                  f"each patient needs {min_slices}-{max_slices} slices (validate.min_slices/max_slices)"),
        CheckSpec("sequences.contiguous", "patients",
                  e.ExpectColumnValuesToBeInSet(column="contiguous", value_set=[True]),
                  "slice indices k must run 0..n-1 with no gap or duplicate"),
        CheckSpec("images.exist", "images", e.ExpectColumnValuesToBeInSet(column="exists", value_set=[True]),
                  "every labelled slice needs its image file; restore it (dvc pull) or drop the row"),
        CheckSpec("images.inside_root", "images", e.ExpectColumnValuesToBeInSet(column="inside", value_set=[True]),
                  "the file's real path (symlinks resolved) leaves the data folder; copy it in instead of linking"),
        CheckSpec("images.decode", "images", e.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True]),
                  "the file is not a readable JPEG within data.max_image_size (by content, not by name); re-export it"),
        CheckSpec("images.mode", "images",
                  e.ExpectColumnValuesToBeInSet(column="mode", value_set=["RGB" if model_input == "windows3" else "L"]),
                  "slices must be 8-bit RGB PNGs of three CT windows (model.input windows3)" if model_input == "windows3"
                  else "slices must be 8-bit single-channel grayscale (PIL mode L; model.input gray)"),
        CheckSpec("images.size", "images",
                  e.ExpectColumnValuesToBeInSet(column="size", value_set=sizes),
                  f"slices must be {' or '.join(sizes)} (validate.image_size / validate.min_image_size)"),
        CheckSpec("files.labelled", "files", e.ExpectColumnValuesToBeInSet(column="accounted", value_set=[True]),
                  "every image in train/ needs a row in train.csv, every test/ file a <hash>_<k>.jpg name; "
                  "add the row or move the file out"),
    ]
    return specs


def _gx_frames(frames: Any) -> dict[str, Any]:
    """The images frame uses nulls for 'not applicable' (a missing file neither decodes nor fails
    to), because GX's column-value expectations skip nulls: one bad file fails one check."""
    images = frames.images.copy()
    if len(images):
        images["size"] = images["size"].where(images["decodes"].fillna(False).astype(bool), None)
        images["mode"] = images["mode"].where(images["mode"].notna(), None)
    return {
        "header": pd.DataFrame(columns=frames.label_header),
        "labels": frames.labels,
        "patients": frames.patients,
        "images": images,
        "files": frames.files,
        **({"series": frames.series} if frames.series is not None else {}),
        **({"subgroups": frames.subgroups} if frames.subgroups is not None else {}),
        **({"masks": frames.masks} if frames.masks is not None else {}),
    }


def run_suite(frames: Any, specs: list[CheckSpec], docs_dir: Path | None) -> list[CheckResult]:
    """Run every check through one ephemeral GX context, one checkpoint per frame."""
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="great_expectations")

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    actions = []
    if docs_dir is not None:
        context.add_data_docs_site(
            "hemo_validation",
            {
                "class_name": "SiteBuilder",
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
        actions.append(UpdateDataDocsAction(name="data_docs", site_names=["hemo_validation"]))
    source = context.data_sources.add_pandas("hemo_data")
    data = _gx_frames(frames)
    results: list[CheckResult] = []
    for frame_name, frame in data.items():
        frame_specs = [s for s in specs if s.frame == frame_name]
        if not frame_specs:
            continue
        batch = source.add_dataframe_asset(frame_name).add_batch_definition_whole_dataframe(frame_name)
        suite = context.suites.add(gx.ExpectationSuite(name=f"hemo_{frame_name}"))
        for spec in frame_specs:
            spec.expectation.meta = {"check": spec.name}
            suite.add_expectation(spec.expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{frame_name}", data=batch, suite=suite)
        )
        index_columns = ["item"] if "item" in frame.columns else []
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"check_{frame_name}",
                validation_definitions=[definition],
                actions=actions,  # type: ignore[arg-type]  # GX's list is invariant; an action is one
                result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_columns},
            )
        )
        outcome = checkpoint.run(batch_parameters={"dataframe": frame})
        by_name = {s.name: s for s in frame_specs}
        for suite_result in outcome.run_results.values():
            for r in suite_result.results:
                config = r.expectation_config
                if config is None or not config.meta:
                    raise RuntimeError("a GX result without its expectation's check name")
                spec = by_name[config.meta["check"]]
                results.append(_to_check_result(spec, r, len(frame)))
    order = {s.name: i for i, s in enumerate(specs)}
    return sorted(results, key=lambda c: order[c.name])


def _to_check_result(spec: CheckSpec, r: Any, rows: int) -> CheckResult:
    result = r.result or {}
    if spec.frame == "header":
        observed = result.get("observed_value") or []
        return CheckResult(spec.name, spec.frame, bool(r.success), 0 if r.success else 1, 1,
                           [] if r.success else [f"found {','.join(map(str, observed))}"], spec.hint)
    if r.exception_info and r.exception_info.get("raised_exception"):
        message = r.exception_info.get("exception_message", "error")
        return CheckResult(spec.name, spec.frame, False, rows, rows, [f"check could not run: {message}"], spec.hint)
    items: list[str] = []
    for entry in result.get("unexpected_index_list") or []:
        name = str(entry.get("item")) if isinstance(entry, dict) else str(entry)
        if name not in items:
            items.append(name)
        if len(items) == MAX_EXAMPLES:
            break
    return CheckResult(
        spec.name, spec.frame, bool(r.success), int(result.get("unexpected_count") or 0),
        int(result.get("element_count") or rows), items, spec.hint,
    )


def data_stats(frames: Any) -> dict[str, Any]:
    labels = frames.labels
    patients = frames.patients
    positives = {
        c: int(pd.to_numeric(labels[c], errors="coerce").fillna(0).sum()) if c in labels else 0 for c in CLASSES
    }
    return {
        "train_patients": int((patients["split"] == "train").sum()),
        "test_patients": int((patients["split"] == "test").sum()),
        "train_slices": int(len(labels)),
        "test_slices": int(patients.loc[patients["split"] == "test", "n_slices"].sum()),
        "positives": positives,
    }


def accepted_sizes(images: Any, image_size: int | None, min_image_size: int) -> list[str]:
    """The slice size every image must have: ``image_size`` when fixed; otherwise the most common
    size among the decoded images, if it is square and at least ``min_image_size`` (so real 512 px
    data and the 256 px demo sample both validate without editing params.yaml)."""
    if image_size is not None:
        return [f"{image_size}x{image_size}"]
    decoded = images[images["decodes"].fillna(False).astype(bool)] if len(images) else images
    if not len(decoded):
        return [f"{min_image_size}x{min_image_size}"]
    common = decoded["size"].value_counts().idxmax()
    width, height = (int(v) for v in common.split("x"))
    if width != height or width < min_image_size:
        return [f"NxN with N >= {min_image_size} (most slices are {common})"]
    return [common]


def validate(data: Path, reports: Path | None, min_slices: int, max_slices: int, image_size: int | None,
             check_images: bool = True, min_image_size: int = 64,
             model_input: str = "gray") -> tuple[list[CheckResult], dict[str, Any]]:
    """Validate ``data`` and (if ``reports``) write summary.json and data_docs/ there.
    ``image_size`` None accepts any square size >= ``min_image_size`` shared by every slice."""
    started = time.perf_counter()
    frames = build_frames(data, min_slices, max_slices, check_images=check_images)
    specs = _specs(frames.label_header, min_slices, max_slices,
                   accepted_sizes(frames.images, image_size, min_image_size), model_input)
    if frames.series is not None:
        specs += _series_specs()
    if frames.subgroups is not None:
        specs += _subgroup_specs()
    if frames.masks is not None:
        specs += _mask_specs()
    if not check_images:
        specs = [s for s in specs if s.frame != "images"]
    if reports is None:
        results = run_suite(frames, specs, None)
    else:
        reports.mkdir(parents=True, exist_ok=True)
        # built beside the old Data Docs, swapped in only once the suite has run: a failure or an
        # interrupt leaves the previous report whole
        with replacing((reports / "data_docs").resolve(), prefix=".data_docs-new-") as docs_dir:
            results = run_suite(frames, specs, docs_dir)
    stats = data_stats(frames)
    stats["seconds"] = round(time.perf_counter() - started, 2)
    if reports is not None:
        summary = {
            "success": all(c.success for c in results),
            "data": str(data),
            "stats": stats,
            "checks": [asdict(c) for c in results],
        }
        write_json_atomic(reports / "summary.json", summary)
    return results, stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="data folder in DLCV layout (params data.root)")
    parser.add_argument("--reports", type=Path, default=Path("reports/validation"),
                        help="where summary.json and data_docs/ go (default: reports/validation)")
    parser.add_argument("--min-slices", type=int, help="fewest slices per patient (params validate.min_slices)")
    parser.add_argument("--max-slices", type=int, help="most slices per patient (params validate.max_slices)")
    parser.add_argument("--image-size", type=int, help="required slice size in px (validate.image_size; default: "
                        "any square size >= validate.min_image_size, the same for every slice)")
    parser.add_argument("--skip-images", action="store_true", help="check labels and sequences only")
    parser.add_argument("--no-mlflow", action="store_true", help="do not log the validation run to MLflow")
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args).override("validate", min_slices=args.min_slices, max_slices=args.max_slices,
                                            image_size=args.image_size)
    cfg = settings.validate
    data = Path(args.data) if args.data else Path(settings.data.root)
    min_slices, max_slices, image_size = cfg.min_slices, cfg.max_slices, cfg.image_size
    results, stats = validate(data, args.reports, min_slices, max_slices, image_size, not args.skip_images,
                              cfg.min_image_size, settings.model.input)
    failed = [c for c in results if not c.success]
    for check in failed:
        print(check.line())
    if not args.no_mlflow:
        _log_to_mlflow(settings, results, stats, args.reports)
    if failed:
        raise ValidationFailed(
            f"{len(failed)} of {len(results)} checks failed for {data}; report: {args.reports}/summary.json, "
            f"{args.reports}/data_docs/index.html"
        )
    pos = ", ".join(f"{c} {stats['positives'][c]}" for c in CLASSES)
    print(
        f"OK {data}: {len(results)} checks passed; {stats['train_patients']} train / {stats['test_patients']} test "
        f"patients, {stats['train_slices']} / {stats['test_slices']} slices; train positives: {pos} "
        f"({stats['seconds']} s)"
    )
    return 0


def _log_to_mlflow(settings: Any, results: list[CheckResult], stats: dict[str, Any], reports: Path | None) -> None:
    """One MLflow run per validation (child of the pipeline run when there is one); a failed
    validation is logged as a FAILED run with the failing checks as a tag."""

    failed = [c.name for c in results if not c.success]
    with tracking.step_run("validate", settings) as run:
        mlflow.log_params({"checks": len(results), **{k: v for k, v in stats.items() if k != "positives"}})
        mlflow.log_metrics({"checks_failed": float(len(failed)),
                            **{f"positives_{c}": float(n) for c, n in stats["positives"].items()}})
        if reports is not None and (reports / "summary.json").is_file():
            mlflow.log_artifact(str(reports / "summary.json"), artifact_path="validation")
        if failed:
            mlflow.set_tag("hemo.failed_checks", ",".join(failed)[:500])
    if failed:
        mlflow.MlflowClient().set_terminated(run.info.run_id, status="FAILED")
