"""Benchmark 3: training images/s through `hemo train` vs a bare PyTorch loop, same model
(ResNet34 + method head), data (the sample's training slices), batch size and precision.

`hemo train` is run as the CLI (2 epochs of --steps steps; the second, warm-cache epoch is
reported, from its train_history.csv). The bare loop preloads the same slices as tensors, does
no augmentation and no logging: it is the ceiling for this model on this machine.
Run: `.venv/bin/python benchmarks/training_throughput.py [--image-size 128] [--precision bf16]`
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402

from hemo_model.data.datasets import SliceDataset
from hemo_model.data.patients import load_split
from hemo_model.inference.precision import autocast
from hemo_model.model.losses import AsymmetricLoss
from hemo_model.model.networks import HemoNet


def bare_loop(data: Path, image_size: int, batch: int, steps: int, precision: str) -> float:
    patients = load_split(data, "train")
    dataset = SliceDataset(patients, image_size)
    count = batch * (steps + 2)
    from hemo_model.data.transforms import to_model_input

    images = to_model_input(torch.stack([dataset[i][0] for i in range(count)]), torch.device("cpu"))
    targets = torch.stack([dataset[i][1] for i in range(count)])
    torch.manual_seed(0)
    model = HemoNet(head="linear").train().to(memory_format=torch.channels_last)  # the default from scratch
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4)
    loss_fn = AsymmetricLoss()
    device = torch.device("cpu")
    for step in range(steps + 2):
        if step == 2:  # two warm-up steps, as hemo's first epoch warms up
            started = time.perf_counter()
        x, y = images[step * batch:(step + 1) * batch], targets[step * batch:(step + 1) * batch]
        with autocast(device, precision):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def hemo_train(data: Path, image_size: int, batch: int, steps: int, precision: str) -> float:
    hemo = Path(sys.executable).with_name("hemo")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "params.yaml").write_text(
            f"train: {{image_size: {image_size}, batch_size: {batch}, precision: {precision}, cache_images: true}}\n"
            "split: {val_fraction: 0.3, gate_fraction: 0.05}\n")  # small sample sets: keep a val role
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db"}
        subprocess.run([str(hemo), "train", "--data", str(data.resolve()), "--epochs", "2", "--max-steps", str(steps)],
                       cwd=tmp, env=env, check=True, capture_output=True)
        with (Path(tmp) / "reports" / "train_history.csv").open() as handle:
            return float(list(csv.DictReader(handle))[1]["samples_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--precision", default="bf16")
    args = parser.parse_args()
    print(machine_line())
    print(f"settings: {args.image_size}px, batch {args.batch_size}, {args.steps} steps, {args.precision}, ResNet34 + head, ASL")
    bare = bare_loop(args.data, args.image_size, args.batch_size, args.steps, args.precision)
    print(f"bare PyTorch loop (preloaded tensors, no augmentation): {bare:6.1f} images/s")
    ours = hemo_train(args.data, args.image_size, args.batch_size, args.steps, args.precision)
    print(f"hemo train (DataLoader, cache, augmentation, progress):  {ours:6.1f} images/s ({ours / bare:.2f}x of bare)")


if __name__ == "__main__":
    main()
