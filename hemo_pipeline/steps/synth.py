"""Generate a synthetic head-CT data set in the DLCV layout (train.csv, train/, test/).

Writes DIR/train.csv, DIR/train/ID_<hash>/<hash>_<k>.jpg and DIR/test/..., plus the test
split's labels in DIR/test_answer_key.csv (for tests and offline evaluation; the pipeline never
reads it). Deterministic for a seed, so a committed data.dvc matches a fresh generation.

With --format dicom the same patients are written as a PACS would export them: one CT study per
patient (axial series + a localizer) under DIR/train/ and DIR/test/, with FAKE identifying headers
(name, ID, birth date, institution, ...) and the train labels in RSNA form in DIR/train_labels.csv;
--shuffle-names puts the files flat under opaque names. Import them with `hemo import-dicom`.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from hemo_model.data.synth import generate_dataset
from hemo_model.data.synth_dicom import generate_dicom_dataset
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.step_args import add_settings_arguments, settings_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not exist or be empty)")
    parser.add_argument("--train-patients", type=int, help="patients in train/ (params synth.train_patients)")
    parser.add_argument("--test-patients", type=int, help="patients in test/ (params synth.test_patients)")
    parser.add_argument("--image-size", type=int, help="slice size in pixels (params synth.image_size; real data 512)")
    parser.add_argument("--seed", type=int, help="random seed (params synth.seed)")
    parser.add_argument("--format", choices=["jpeg", "dicom"], default="jpeg",
                        help="jpeg: the DLCV layout (default); dicom: CT series with fake identifying headers")
    parser.add_argument("--shuffle-names", action="store_true",
                        help="with --format dicom: flat folder, opaque file names, InstanceNumber out of z order")
    parser.add_argument("--followups", type=int, default=0, metavar="N",
                        help="with --format dicom: the last N train studies are follow-up scans of earlier patients "
                        "(same PatientID), as a PACS holds them")
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    cfg = settings_from(args).override("synth", train_patients=args.train_patients, test_patients=args.test_patients,
                                       image_size=args.image_size, seed=args.seed).synth
    train_patients, test_patients, image_size, seed = cfg.train_patients, cfg.test_patients, cfg.image_size, cfg.seed
    out: Path = args.out
    if args.shuffle_names and args.format != "dicom":
        raise UserError("--shuffle-names applies to --format dicom only")
    if args.followups and (args.format != "dicom" or not 0 < args.followups <= train_patients // 2):
        raise UserError(f"--followups applies to --format dicom and must be 1..{train_patients // 2} "
                        f"(half the {train_patients} train studies at most)")
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty; choose a new --out or remove it first")
    # Write into a sibling temp folder and rename at the end, so an interrupted run never
    # leaves a half-written data set that looks complete.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        if args.format == "dicom":
            counts = generate_dicom_dataset(staging, train_patients, test_patients, image_size, seed,
                                            shuffle_names=args.shuffle_names, followups=args.followups)
        else:
            counts = generate_dataset(staging, train_patients, test_patients, image_size, seed, progress=True)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(
        f"wrote {out}: {train_patients} train {'studies' if args.followups else 'patients'} / "
        f"{counts['train_slices']} slices" + (f" ({args.followups} of them follow-ups)" if args.followups else "") + ", "
        f"{test_patients} test patients / {counts['test_slices']} slices, {image_size}px, seed {seed}"
        + (" (DICOM, fake identifying headers; train labels in train_labels.csv)" if args.format == "dicom" else "")
    )
    return 0
