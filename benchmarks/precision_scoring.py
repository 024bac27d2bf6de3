"""Benchmark 2: bf16 autocast vs fp32 CPU scoring of a trained model: throughput and micro-F2.

Scores the validation patients (the pipeline's split) with 5-slice context in fp32 and in bf16
autocast (channels_last both), and prints slices/s and micro-F2 for each.
Run after `make run`: `.venv/bin/python benchmarks/precision_scoring.py [--model outputs/refine/best.pt]`
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402

from hemo_model.inference.precision import prepare_for_inference
from hemo_model.inference.scoring import score_sequences, stack_scores
from hemo_model.metrics.classification import micro_f2
from hemo_model.model.storage import load_checkpoint
from hemo_pipeline.services.patient_roles import load_roles
from hemo_pipeline.services.settings import load_settings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", type=Path, default=Path("outputs/refine/best.pt"))
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if not args.model.is_file():
        sys.exit(f"{args.model} not found: run `make run` first (or pass --model)")
    model, config, _ = load_checkpoint(args.model)
    device = torch.device("cpu")
    model = prepare_for_inference(model, device)
    val = load_roles(args.data, load_settings().split, need=("val",))["val"]
    n = sum(len(p) for p in val)
    print(machine_line())
    print(f"settings: {args.model}, {len(val)} validation patients, {n} slices, {config.image_size}px, "
          f"5-slice context, batch 32, best of {args.repeats}")
    results = {}
    for precision in ("fp32", "bf16"):
        score_sequences(model, val[:1], config.image_size, config.context_weights, device, precision, cache=True)
        best = float("inf")
        for _ in range(args.repeats):
            started = time.perf_counter()
            scores = score_sequences(model, val, config.image_size, config.context_weights, device, precision)
            best = min(best, time.perf_counter() - started)
        probs, labels = stack_scores(scores)
        results[precision] = (n / best, micro_f2(labels, probs))
        print(f"{precision}: {n / best:7.1f} slices/s, val micro-F2 {results[precision][1]:.4f}")
    speed = results["bf16"][0] / results["fp32"][0]
    print(f"bf16 vs fp32: {speed:.2f}x throughput, micro-F2 change {results['bf16'][1] - results['fp32'][1]:+.4f}")


if __name__ == "__main__":
    main()
