"""Benchmark: does the input path keep the device busy? The model alone against the pipeline's
scoring, training and refinement paths, on the same device, model, sizes and precision.

Prints, with the device, torch version and settings:

* the model-alone limit: forward passes on device-resident tensors (bf16 and fp32), slices/s;
* scoring as `hemo score` runs it (JPEG files -> uint8 loader workers -> device -> model), slices/s
  and the seconds it would take for 25,053 slices (the original test set);
* training: `hemo_model.training.fit`'s path (cached uint8 slices, loader workers, device-side
  augmentation) against a bare loop over device-resident tensors at the same batch and precision;
* refinement (5-slice windows), windows/s against its model-alone limit;
* an ensemble of 3 models scored in one pass, and peak device memory.

It imports only torch/torchvision/numpy/PIL and `hemo_model` (no MLflow, DVC or Airflow), so it runs
where only those are installed: `PYTHONPATH=. python benchmarks/gpu_throughput.py --device cuda`.
On a CPU use small sizes, e.g. `--size 128 --slices 256 --train-steps 8`.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402

from hemo_model.data.cache import SliceCache
from hemo_model.data.datasets import SliceDataset, WindowDataset
from hemo_model.data.patients import PatientSequence
from hemo_model.inference.precision import autocast, prepare_for_inference
from hemo_model.inference.scoring import score_sequences
from hemo_model.model.losses import AsymmetricLoss
from hemo_model.model.networks import ContextModel, HemoNet
from hemo_model.model.spec import CONTEXT_WEIGHTS, ModelSpec
from hemo_model.training.checkpointer import Checkpointer
from hemo_model.training.config import FitConfig
from hemo_model.training.loop import fit

ORIGINAL_TEST_SLICES = 25053


def synthetic_folder(root: Path, slices: int, size: int, per_patient: int = 30) -> list[PatientSequence]:
    """``slices`` JPEG slices of random texture (the decoder's cost does not depend on content much)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    patients, made = [], 0
    base = rng.integers(0, 255, (size, size), dtype=np.uint8)
    while made < slices:
        n = min(per_patient, slices - made)
        folder = root / f"ID_{len(patients):010x}"
        folder.mkdir(parents=True)
        paths = []
        for k in range(n):
            path = folder / f"{len(patients):010x}_{k}.jpg"
            Image.fromarray(np.roll(base, k * 7, axis=0)).save(path, quality=90)
            paths.append(path)
        patients.append(PatientSequence(folder.name, tuple(paths), np.zeros((n, 5), dtype=np.float32)))
        made += n
    return patients


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


@torch.no_grad()
def model_limit(model: torch.nn.Module, device: torch.device, batch: int, size: int, precision: str,
                repeats: int) -> float:
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    with autocast(device, precision):
        model(x)
        sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            model(x)
        sync(device)
    return batch * repeats / (time.perf_counter() - started)


def train_limit(model: torch.nn.Module, device: torch.device, batch: int, size: int, precision: str, steps: int,
                window: int = 1) -> float:
    """A bare training loop on device-resident tensors: the ceiling for the training path."""
    x = torch.randn(batch, window, 3, size, size, device=device) if window > 1 else \
        torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch, 5), device=device).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = AsymmetricLoss()
    for step in range(steps + 2):
        if step == 2:
            sync(device)
            started = time.perf_counter()
        with autocast(device, precision):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    return batch * steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--slices", type=int, default=4096, help="slices scored (the figure is scaled to 25,053)")
    parser.add_argument("--batch", type=int, default=128, help="scoring batch")
    parser.add_argument("--train-batch", type=int, default=20, help="the method's batch size")
    parser.add_argument("--train-steps", type=int, default=60)
    parser.add_argument("--workers", type=int, default=min(os.cpu_count() or 1, 16))
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    device = torch.device(args.device)
    workers = args.workers if device.type == "cuda" else 0
    print(machine_line())
    print(f"settings: {device}, {args.size}px, {args.slices} slices, scoring batch {args.batch}, training batch "
          f"{args.train_batch}, {args.precision}, loader workers {workers}")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.backends.cudnn.benchmark = True

    torch.manual_seed(0)
    model = prepare_for_inference(HemoNet(head="linear"), device)
    for precision in ("fp32", "bf16"):
        rate = model_limit(model, device, args.batch, args.size, precision, args.repeats)
        print(f"model alone, {precision}, batch {args.batch}: {rate:,.0f} slices/s")
    limit = model_limit(model, device, args.batch, args.size, args.precision, args.repeats)

    with tempfile.TemporaryDirectory() as tmp:
        patients = synthetic_folder(Path(tmp), args.slices, args.size)
        score_sequences(model, patients[:1], args.size, CONTEXT_WEIGHTS, device, args.precision, args.batch, workers)
        sync(device)
        started = time.perf_counter()
        score_sequences(model, patients, args.size, CONTEXT_WEIGHTS, device, args.precision, args.batch, workers)
        sync(device)
        rate = args.slices / (time.perf_counter() - started)
        print(f"scoring path (JPEG -> uint8 workers -> device, 5-slice context): {rate:,.0f} slices/s = "
              f"{rate / limit:.2f}x the {args.precision} model limit; {ORIGINAL_TEST_SLICES:,} slices in "
              f"{ORIGINAL_TEST_SLICES / rate:.1f} s")

        ensemble = [prepare_for_inference(HemoNet(head="linear"), device) for _ in range(3)]
        started = time.perf_counter()
        score_sequences(ensemble, patients, args.size, CONTEXT_WEIGHTS, device, args.precision, args.batch, workers)
        sync(device)
        rate3 = args.slices / (time.perf_counter() - started)
        print(f"3-model ensemble, each slice decoded once: {rate3:,.0f} slices/s; {ORIGINAL_TEST_SLICES:,} slices in "
              f"{ORIGINAL_TEST_SLICES / rate3:.1f} s")

        cache = SliceCache.build([p for patient in patients for p in patient.paths], args.size)
        train_model = HemoNet(head="linear").to(device)
        bare = train_limit(train_model, device, args.train_batch, args.size, args.precision, args.train_steps)
        dataset = SliceDataset(patients, args.size, cache=cache)
        steps = min(args.train_steps, len(dataset) // args.train_batch)
        config = FitConfig(epochs=2, batch_size=args.train_batch, precision=args.precision, workers=workers,
                           max_steps=steps)
        out = Path(tmp) / "fit"
        result = fit(HemoNet(head="linear"), dataset, lambda m: 0.0, AsymmetricLoss(), config,
                     Checkpointer(out, ModelSpec(head="linear", image_size=args.size)), device=device, progress=False)
        ours = result.history[-1].samples_per_s  # the second epoch: workers warm
        print(f"training (fit: cached uint8, workers, device-side augmentation): {ours:,.0f} img/s vs bare loop on "
              f"device tensors {bare:,.0f} img/s = {ours / bare:.2f}x (batch {args.train_batch}, {args.precision})")

        windows = WindowDataset(patients, args.size, cache=cache)
        context = ContextModel(HemoNet(head="linear"), CONTEXT_WEIGHTS)
        refine_batch = 12
        bare_windows = train_limit(ContextModel(HemoNet(head="linear"), CONTEXT_WEIGHTS).to(device), device,
                                   refine_batch, args.size, args.precision, max(4, args.train_steps // 4), window=5)
        config = FitConfig(epochs=2, batch_size=refine_batch, lr=1e-6, precision=args.precision, workers=workers,
                           max_steps=min(max(4, args.train_steps // 4), len(windows) // refine_batch))
        result = fit(context, windows, lambda m: 0.0, AsymmetricLoss(), config,
                     Checkpointer(Path(tmp) / "refine", ModelSpec(head="linear", image_size=args.size)),
                     save_model=context.slice_model, device=device, progress=False)
        rate = result.history[-1].samples_per_s
        print(f"refinement (5-slice windows): {rate:,.1f} windows/s vs bare {bare_windows:,.1f} = "
              f"{rate / bare_windows:.2f}x")
    if device.type == "cuda":
        print(f"peak device memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
