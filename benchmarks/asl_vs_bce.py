"""Experiment: ASL vs BCE with the same budget, and single-slice vs 5-slice context, through the
real `hemo` steps (train -> refine -> evaluate --no-register -> score) on a synthetic set.

Reports validation micro-F2 (the pipeline's split) and held-out test micro-F2 (scored with
`hemo score`, compared with the generator's answer key), single slice vs 5-slice context.
Takes ~30 min on a 2-core CPU with the defaults. Not a test: it prints measured figures.
Run: `.venv/bin/python benchmarks/asl_vs_bce.py [--train 100 --test 30 --size 128 --epochs 8]`
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402

from hemo_model import CLASSES  # noqa: E402
from hemo_model.data.synth import ANSWER_KEY_NAME, generate_dataset
from hemo_model.metrics.classification import micro_f2

HEMO = str(Path(sys.executable).with_name("hemo"))


def read_labels(path: Path) -> dict[str, np.ndarray]:
    with path.open() as handle:
        return {row["ID"]: np.array([float(row[c]) for c in CLASSES]) for row in csv.DictReader(handle)}


def test_f2(predictions: Path, answers: dict[str, np.ndarray]) -> float:
    predicted = read_labels(predictions)
    ids = sorted(answers)
    return micro_f2(np.stack([answers[i] for i in ids]), np.stack([predicted[i] for i in ids]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", type=int, default=100)
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--refine-steps", type=int, default=40)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hemo-asl-bce-"))
    data = work / "data"
    if not data.exists():
        generate_dataset(data, args.train, args.test, image_size=args.size, seed=123)
    answers = read_labels(data / ANSWER_KEY_NAME)
    print(machine_line())
    print(f"settings: {args.train} train / {args.test} test patients, {args.size}px, {args.epochs} epochs, "
          f"bf16, refine {args.refine_steps} steps, val fraction 0.2, workdir {work}")
    for loss in ("asl", "bce"):
        run = work / loss
        run.mkdir(exist_ok=True)
        (run / "params.yaml").write_text(
            f"split: {{val_fraction: 0.2, seed: 0}}\n"
            f"train: {{image_size: {args.size}, epochs: {args.epochs}, loss: {loss}, precision: bf16, cache_images: true}}\n"
            f"refine: {{epochs: 1, max_steps: {args.refine_steps}}}\n")
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{run / 'mlflow.db'}"}
        started = time.perf_counter()
        test = str(data / "test")
        commands = [
            ["train", "--data", str(data)],
            ["refine", "--data", str(data)],
            ["evaluate", "--data", str(data), "--no-register"],
            ["score", "--model", "outputs/refine/best.pt", "--data", test, "--context", "5", "--out", "outputs/test_context.csv"],
            ["score", "--model", "outputs/refine/best.pt", "--data", test, "--context", "1", "--out", "outputs/test_single.csv"],
        ]
        for command in commands:
            subprocess.run([HEMO, *command], cwd=run, env=env, check=True, capture_output=True)
        evaluation = json.loads((run / "reports" / "evaluate.json").read_text())
        print(f"{loss.upper()}: val micro-F2 single {evaluation['micro_f2_single']:.4f} | context "
              f"{evaluation['micro_f2_context']:.4f} | context+tuned {evaluation['micro_f2_context_tuned']:.4f} "
              f"(all-positive baseline {evaluation['micro_f2_all_positive_baseline']:.4f}); "
              f"test micro-F2 single {test_f2(run / 'outputs/test_single.csv', answers):.4f} | context "
              f"{test_f2(run / 'outputs/test_context.csv', answers):.4f} (threshold 0.5); "
              f"{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
