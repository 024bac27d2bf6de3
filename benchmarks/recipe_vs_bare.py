"""Benchmark: the pipeline's training recipe against a bare PyTorch loop, same split and budget.

On a phantom set the project never trained on (its own seed), both train on the same `train`
role patients for the same epochs, batch size and precision:

* bare: torchvision ResNet34 with a 5-way linear head, ASL, Adam 1e-4, the method's augmentation,
  shuffled batches, the last epoch; about 60 lines below, nothing from the pipeline but the data
  reading and the augmentation;
* pipeline: `hemo train` exactly as `dvc repro` runs it (settings from --params, default: the
  method), scored from the checkpoint it selects (best.pt) and from its last epoch (last.pt);
* any --variant NAME="--set k=v ..." : `hemo train` with those overrides (e.g. the method head).

Every model is scored on the test patients with the 5-slice context filter at threshold 0.5 (the
leaderboard convention) against the generator's answer key; micro-F2 and per-class F2 are printed
side by side, with the mean ROC-AUC (threshold-free: separates "learns worse" from "calibrated
worse"). CPU: ~13 min per recipe at the defaults (128 px, 20 epochs, 48+24 patients, bf16).
Run: `.venv/bin/python benchmarks/recipe_vs_bare.py [--epochs 20 --size 128 --variant method="--set model.head=method"]`
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402

from hemo_model import CLASSES  # noqa: E402
from hemo_model.data.patients import load_folder, load_split, patients_by_role
from hemo_model.data.synth import ANSWER_KEY_NAME, generate_dataset
from hemo_model.data.transforms import reference_augmentation
from hemo_model.inference.precision import prepare_for_inference
from hemo_model.inference.scoring import score_sequences, stack_scores
from hemo_model.metrics.classification import classification_report
from hemo_model.model.losses import AsymmetricLoss
from hemo_model.model.spec import CONTEXT_WEIGHTS
from hemo_model.model.storage import load_checkpoint

HEMO = str(Path(sys.executable).with_name("hemo"))


def test_set(data: Path) -> tuple[list, np.ndarray]:
    """Test patients with the answer key's labels attached, in scan order."""
    import csv

    with (data / ANSWER_KEY_NAME).open() as handle:
        answers = {row["ID"]: [float(row[c]) for c in CLASSES] for row in csv.DictReader(handle)}
    patients = load_folder(data / "test")
    labels = np.array([answers[p.name] for patient in patients for p in patient.paths], dtype=np.float32)
    return patients, labels


def evaluate(model: torch.nn.Module, patients: list, labels: np.ndarray, size: int, precision: str) -> dict:
    device = torch.device("cpu")
    model = prepare_for_inference(model, device)
    scores = score_sequences(model, patients, size, CONTEXT_WEIGHTS, device, precision, batch_size=64)
    probs, _ = stack_scores(scores)
    report = classification_report(labels, probs)
    aucs = [report[f"roc_auc_{c}"] for c in CLASSES if np.isfinite(report[f"roc_auc_{c}"])]
    return {"micro_f2": report["micro_f2"], **{c: report[f"f2_{c}"] for c in CLASSES},
            "mean_auc": float(np.mean(aucs)) if aucs else float("nan")}


class BareSlices(torch.utils.data.Dataset):
    """What a PyTorch user writes first: PIL, the method's v2 augmentation on the CPU, ImageNet
    normalisation, images kept in memory."""

    def __init__(self, patients: list, size: int) -> None:
        from PIL import Image
        from torchvision.transforms import v2

        self.images = [Image.open(p).convert("L").resize((size, size), Image.Resampling.BILINEAR)
                       for patient in patients for p in patient.paths]
        self.labels = torch.from_numpy(np.concatenate([patient.labels for patient in patients]))
        self.transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), reference_augmentation(),
                                     v2.Lambda(lambda x: x.expand(3, -1, -1)),
                                     v2.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(self.images[index]), self.labels[index]


def bare_loop(train_patients: list, size: int, epochs: int, batch: int, precision: str, seed: int) -> torch.nn.Module:
    """The 'bare' recipe: what a PyTorch user writes first."""
    from torchvision.models import resnet34

    torch.manual_seed(seed)
    model = resnet34(weights=None, num_classes=len(CLASSES)).to(memory_format=torch.channels_last)
    dataset = BareSlices(train_patients, size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = AsymmetricLoss()
    for epoch in range(epochs):
        model.train()
        started, total = time.perf_counter(), 0.0
        for images, targets in loader:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(images.contiguous(memory_format=torch.channels_last))
            loss = loss_fn(logits.float(), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss)
        print(f"  bare epoch {epoch + 1}/{epochs}: loss {total / len(loader):.3f} ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return model


def pipeline(data: Path, work: Path, params: Path | None, sets: list[str], size: int, epochs: int, batch: int,
             precision: str, seed: int) -> tuple[Path, dict]:
    """`hemo train` in its own folder; returns the folder and its reports/train.json."""
    work.mkdir(parents=True, exist_ok=True)
    argv = [HEMO, "train", "--data", str(data), "--epochs", str(epochs), "--image-size", str(size),
            "--batch-size", str(batch), "--precision", precision, "--seed", str(seed), "--device", "cpu",
            "--set", "train.cache_images=true", *sets]  # the cache changes speed only
    if params is not None:
        argv += ["--params", str(params.resolve())]
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    env.pop("HEMO_PARENT_RUN_ID", None)
    subprocess.run(argv, cwd=work, env=env, check=True)
    return work, json.loads((work / "reports" / "train.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hemo-recipe-vs-bare"))
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--test", type=int, default=24)
    parser.add_argument("--data-seed", type=int, default=123, help="phantom seed (not the demo's 0)")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--params", type=Path, help="params file for `hemo train` (default: method defaults)")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="--set k=v ..."')
    parser.add_argument("--skip-bare", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)
    print(machine_line())
    print(f"settings: {args.train} train / {args.test} test phantom patients (seed {args.data_seed}), {args.size}px, "
          f"{args.epochs} epochs, batch {args.batch}, {args.precision}, training seed {args.seed}")

    data = args.work / "data"
    if not data.is_dir():
        generate_dataset(data, args.train, args.test, args.size, args.data_seed)
    patients, labels = test_set(data)
    from hemo_pipeline.services.patient_roles import role_spec
    from hemo_pipeline.services.settings import Settings, load_settings

    split = (load_settings(args.params) if args.params else Settings()).split
    roles = patients_by_role(load_split(data, "train"), role_spec(split))
    print(f"roles: {len(roles['train'])} train / {len(roles['val'])} val / {len(roles['gate'])} gate patients; "
          f"{len(patients)} test patients, {len(labels)} slices")

    results: dict[str, dict] = {}
    if not args.skip_bare:
        started = time.perf_counter()
        model = bare_loop(roles["train"], args.size, args.epochs, args.batch, args.precision, args.seed)
        results["bare loop (last epoch)"] = evaluate(model, patients, labels, args.size, args.precision)
        print(f"bare loop: {time.perf_counter() - started:.0f} s", flush=True)
    recipes = [("pipeline", [])] + [(v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in args.variant]
    for name, sets in recipes:
        started = time.perf_counter()
        folder, summary = pipeline(data, args.work / name, args.params, sets, args.size, args.epochs, args.batch,
                                   args.precision, args.seed)
        for which in ("best", "last"):
            model, _, payload = load_checkpoint(folder / "outputs" / "train" / f"{which}.pt")
            label = f"{name} ({'selected' if which == 'best' else 'last'}: epoch {payload['epoch']})"
            results[label] = evaluate(model, patients, labels, args.size, args.precision)
        print(f"{name}: {time.perf_counter() - started:.0f} s, selection: {summary.get('selection', 'best val')}",
              flush=True)

    header = f"{'recipe':<44} {'micro-F2':>8} " + " ".join(f"{c:>6}" for c in CLASSES) + f" {'AUC':>6}"
    print("\ntest micro-F2 and per-class F2 (5-slice context, threshold 0.5)\n" + header)
    for label, r in results.items():
        print(f"{label:<44} {r['micro_f2']:8.4f} " + " ".join(f"{r[c]:6.3f}" for c in CLASSES)
              + f" {r['mean_auc']:6.3f}")
    (args.work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
