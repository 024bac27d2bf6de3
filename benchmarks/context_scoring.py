"""Benchmark 1: 5-slice context scoring, one forward pass per slice + filter, vs scoring each
5-slice window separately (naive) vs plain single-slice prediction.

Prints time per slice for each and the ratios, on the sample's test patients, plus the max
difference between the two context scorers (they must agree to 1e-5).
Run: `.venv/bin/python benchmarks/context_scoring.py [--image-size 128] [--patients 3]`
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402

from hemo_model.data.patients import load_folder
from hemo_model.inference.scoring import score_sequences, score_windows_naive
from hemo_model.model.networks import HemoNet
from hemo_model.model.spec import CONTEXT_WEIGHTS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("data/test"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--patients", type=int, default=3)
    parser.add_argument("--precision", default="fp32")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = HemoNet().eval().to(memory_format=torch.channels_last)
    patients = load_folder(args.data)[: args.patients]
    n = sum(len(p) for p in patients)
    device = torch.device("cpu")
    print(machine_line())
    print(f"settings: {len(patients)} patients, {n} slices, {args.image_size}px, {args.precision}, batch 32 (naive: 8 windows)")
    score_sequences(model, patients[:1], args.image_size, CONTEXT_WEIGHTS, device, args.precision)  # warm-up

    timings = {}
    started = time.perf_counter()
    fast = score_sequences(model, patients, args.image_size, CONTEXT_WEIGHTS, device, args.precision)
    timings["context, 1 forward/slice + filter"] = time.perf_counter() - started
    started = time.perf_counter()
    naive = score_windows_naive(model, patients, args.image_size, CONTEXT_WEIGHTS, device, args.precision)
    timings["context, naive 5 forwards/slice"] = time.perf_counter() - started
    started = time.perf_counter()
    score_sequences(model, patients, args.image_size, (1.0,), device, args.precision)
    timings["single slice"] = time.perf_counter() - started

    base = timings["context, 1 forward/slice + filter"]
    for name, seconds in timings.items():
        print(f"{name:36s} {1000 * seconds / n:8.1f} ms/slice   {seconds / base:5.2f}x the filtered context time")
    diff = np.abs(np.concatenate([s.logits for s in fast]) - naive).max()
    print(f"max |filtered - naive| logit difference: {diff:.2e}")


if __name__ == "__main__":
    main()
