"""Generate a synthetic head-CT data set in the DLCV layout (train.csv, train/, test/).

Writes DIR/train.csv, DIR/train/ID_<hash>/<hash>_<k>.jpg and DIR/test/..., plus the test
split's labels in DIR/test_answer_key.csv (for tests and offline evaluation; the pipeline never
reads it). Deterministic for a seed, so a committed data.dvc matches a fresh generation.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from components.errors import UserError
from components.params import load_params, resolve, section


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, help="folder to create (must not exist or be empty)")
    parser.add_argument("--train-patients", type=int, help="patients in train/ (params synth.train_patients)")
    parser.add_argument("--test-patients", type=int, help="patients in test/ (params synth.test_patients)")
    parser.add_argument("--image-size", type=int, help="slice size in pixels (params synth.image_size; real data 512)")
    parser.add_argument("--seed", type=int, help="random seed (params synth.seed)")
    parser.add_argument("--params", type=Path, help="params file (default: ./params.yaml if present)")


def run(args: argparse.Namespace) -> int:
    from hemo_model.synth import generate_dataset

    cfg = section(load_params(args.params), "synth")
    train_patients = int(resolve(args.train_patients, cfg, "train_patients", 40))
    test_patients = int(resolve(args.test_patients, cfg, "test_patients", 10))
    image_size = int(resolve(args.image_size, cfg, "image_size", 512))
    seed = int(resolve(args.seed, cfg, "seed", 0))
    if train_patients < 1 or test_patients < 0:
        raise UserError("--train-patients must be >= 1 and --test-patients >= 0")
    if image_size < 32:
        raise UserError(f"--image-size {image_size} is too small to draw a head; use 32 or more")
    out: Path = args.out
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} already exists and is not empty; choose a new --out or remove it first")
    # Write into a sibling temp folder and rename at the end, so an interrupted run never
    # leaves a half-written data set that looks complete.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        counts = generate_dataset(staging, train_patients, test_patients, image_size, seed, progress=True)
        if out.exists():
            out.rmdir()
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(
        f"wrote {out}: {train_patients} train patients / {counts['train_slices']} slices, "
        f"{test_patients} test patients / {counts['test_slices']} slices, {image_size}px, seed {seed}"
    )
    return 0
