"""Benchmark: the pipeline as shipped against a bare PyTorch loop, over seeds and phantom sizes.

For every labelled-set size (--train-sizes) and seed (--seeds), a phantom set the project never
trained on (phantom seed = --data-seed + seed) is generated; then, with the same epochs, batch
size, image size and precision:

* bare: torchvision ResNet34 with a 5-way linear head, ASL, Adam 1e-4, the method's augmentation,
  shuffled batches, the last epoch; about 60 lines below, nothing from the pipeline but the data
  reading and the augmentation. It trains on every labelled patient (--bare-on all, the issue's
  yardstick: a user without the pipeline holds nothing out) or on the pipeline's train role only;
* shipped: what `dvc repro` runs, with params.yaml (--params) apart from epochs: `hemo train`,
  `hemo refine`, `hemo evaluate` (thresholds tuned on val where val can bear it), scored with the
  5-slice context at the thresholds it stores, and its single-slice scores at 0.5;
* any --variant NAME="--set k=v ...": the shipped pipeline with those overrides on every step
  (e.g. `rf="--set train.sampling=repeat_factor"`).

Every model is scored on the test patients against the generator's answer key: micro-F2 and
per-class F2 per run, then mean, standard deviation, minimum and maximum over the seeds per size.
CPU (2-core Xeon, bf16): 1214 s for the bare loop, 900-1130 s for a pipeline at 48 patients, 128 px,
20 epochs. Results: <work>/results.json (every run) and the printed tables.
Run: `.venv/bin/python benchmarks/recipe_vs_bare.py --train-sizes 48 80 --seeds 0 1 2 \\
        --variant rf="--set train.sampling=repeat_factor"`
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

_SCRIPT = Path(sys.executable).with_name("hemo")
# the console script where the project is installed, else the module (a machine with the project on PYTHONPATH)
HEMO = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "hemo_pipeline.cli"]


def test_set(data: Path) -> tuple[list, np.ndarray]:
    """Test patients with the answer key's labels attached, in scan order."""
    import csv

    with (data / ANSWER_KEY_NAME).open() as handle:
        answers = {row["ID"]: [float(row[c]) for c in CLASSES] for row in csv.DictReader(handle)}
    patients = load_folder(data / "test")
    labels = np.array([answers[p.name] for patient in patients for p in patient.paths], dtype=np.float32)
    return patients, labels


def evaluate(model: torch.nn.Module, patients: list, labels: np.ndarray, size: int, precision: str,
             device: torch.device, thresholds: list[float] | float = 0.5, context: bool = True) -> dict:
    """Test micro-F2, per-class F2 and mean ROC-AUC of ``model`` (5-slice filter or single slices)."""
    model = prepare_for_inference(model, device)
    scores = score_sequences(model, patients, size, CONTEXT_WEIGHTS if context else (1.0,), device, precision,
                             batch_size=64)
    probs, _ = stack_scores(scores)
    report = classification_report(labels, probs, thresholds)
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


def bare_loop(train_patients: list, size: int, epochs: int, batch: int, precision: str, seed: int,
              device: torch.device) -> torch.nn.Module:
    """The 'bare' recipe: what a PyTorch user writes first."""
    from torchvision.models import resnet34

    torch.manual_seed(seed)
    model = resnet34(weights=None, num_classes=len(CLASSES)).to(device, memory_format=torch.channels_last)
    dataset = BareSlices(train_patients, size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = AsymmetricLoss()
    for epoch in range(epochs):
        model.train()
        started, total = time.perf_counter(), 0.0
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                logits = model(images.contiguous(memory_format=torch.channels_last))
            loss = loss_fn(logits.float(), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
        print(f"  bare epoch {epoch + 1}/{epochs}: loss {total / len(loader):.3f} ({time.perf_counter() - started:.0f} s)",
              flush=True)
    return model


def run_step(argv: list[str], work: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}"}
    env.pop("HEMO_PARENT_RUN_ID", None)
    subprocess.run([*HEMO, *argv], cwd=work, env=env, check=True)


def shipped(data: Path, work: Path, params: Path, sets: list[str], epochs: int, precision: str,
            seed: int, device: str) -> tuple[Path, dict]:
    """train -> refine -> evaluate as dvc.yaml runs them, in ``work``; returns the refined model's
    path and reports/evaluate.json (its tuned thresholds)."""
    work.mkdir(parents=True, exist_ok=True)
    common = ["--data", str(data.resolve()), "--params", str(params.resolve()), "--device", device,
              "--set", f"train.precision={precision}", "--set", "train.cache_images=true", *sets]
    run_step(["train", *common, "--epochs", str(epochs), "--seed", str(seed), "--out", "outputs/train",
              "--reports", "reports", "--resume", "never"], work)
    run_step(["refine", *common, "--init", "outputs/train/best.pt", "--out", "outputs/refine", "--reports", "reports",
              "--resume", "never"], work)
    run_step(["evaluate", *common, "--model", "outputs/refine/best.pt", "--reports", "reports",
              "--out", "outputs/challenger.json"], work)
    return work / "outputs" / "refine" / "best.pt", json.loads((work / "reports" / "evaluate.json").read_text())


def record(runs: list[dict], work: Path, where: dict, recipe: str, result: dict, seconds: float,
           **extra: object) -> None:
    """Keep one run's result, print it and rewrite results.json (a long run keeps what it has)."""
    runs.append({**where, "recipe": recipe, "seconds": round(seconds, 1), **result, **extra})
    print(f"{recipe}: micro-F2 {result['micro_f2']:.4f} (" + ", ".join(f"{c} {result[c]:.3f}" for c in CLASSES)
          + f"), {seconds:.0f} s", flush=True)
    (work / "results.json").write_text(json.dumps(runs, indent=2))


def summarise(runs: list[dict]) -> None:
    """Mean, standard deviation (n-1), minimum and maximum over seeds, per size and recipe."""
    header = (f"{'size':>4} {'recipe':<26} {'n':>2} {'micro-F2 mean':>13} {'sd':>6} {'min':>6} {'max':>6} "
              + " ".join(f"{c:>6}" for c in CLASSES) + f" {'EDH>0':>6}")
    print("\nover seeds: test micro-F2 (5-slice context) mean, sd, min, max; per-class F2 means; "
          "runs with EDH F2 > 0\n" + header)
    for size in sorted({r["size"] for r in runs}):
        for recipe in dict.fromkeys(r["recipe"] for r in runs if r["size"] == size):
            chosen = [r for r in runs if r["size"] == size and r["recipe"] == recipe]
            values = np.array([r["micro_f2"] for r in chosen])
            sd = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
            print(f"{size:>4} {recipe:<26} {len(values):>2} {values.mean():13.4f} {sd:6.4f} {values.min():6.4f} "
                  f"{values.max():6.4f} " + " ".join(f"{np.mean([r[c] for r in chosen]):6.3f}" for c in CLASSES)
                  + f" {sum(r['edh'] > 0 for r in chosen):>3}/{len(chosen)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hemo-recipe-vs-bare"))
    parser.add_argument("--train-sizes", type=int, nargs="+", default=[48], help="labelled phantom patients")
    parser.add_argument("--test", type=int, default=24)
    parser.add_argument("--data-seed", type=int, default=123, help="phantom seed of seed 0 (not the demo's 0)")
    parser.add_argument("--size", type=int, default=128, help="image size (must match the params file's)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=20, help="the bare loop's batch (the pipeline's is in params)")
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--device", default="cpu", help="every model trains and is scored here (cpu, cuda)")
    parser.add_argument("--workers", default=None,
                        help="data.workers for the pipeline's steps (speed only; default: params.yaml's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (lower it when several invocations share a machine)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--params", type=Path, default=Path(__file__).resolve().parents[1] / "params.yaml")
    parser.add_argument("--bare-on", choices=["all", "train"], default="all")
    parser.add_argument("--variant", action="append", default=[], metavar='NAME="--set k=v ..."')
    parser.add_argument("--skip-bare", action="store_true")
    parser.add_argument("--skip-shipped", action="store_true", help="only the variants")
    parser.add_argument("--summarise", type=Path, nargs="+", metavar="RESULTS_JSON",
                        help="train nothing: print the tables over the runs in these results.json files "
                             "(seeds or sizes run in separate invocations)")
    args = parser.parse_args()
    if args.summarise:
        merged: dict[tuple, dict] = {}
        for path in args.summarise:
            for run in json.loads(path.read_text()):
                key = (run["size"], run["seed"], run["recipe"])
                if key in merged:
                    print(f"{path}: size {key[0]}, seed {key[1]}, {key[2]} already read from an earlier file; "
                          "this file's run replaces it")
                merged[key] = run
        print_tables(list(merged.values()))
        return
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from hemo_pipeline.services.patient_roles import role_spec
    from hemo_pipeline.services.settings import load_settings

    settings = load_settings(args.params)
    if settings.train.image_size != args.size:
        parser.error(f"--size {args.size} differs from train.image_size {settings.train.image_size} in {args.params}")
    print(machine_line())
    print(f"settings: {args.train_sizes} labelled / {args.test} test phantom patients, seeds {args.seeds} "
          f"(phantom seed {args.data_seed} + seed), {args.size}px, {args.epochs} epochs, {args.precision}, {args.device}; "
          f"pipeline: {args.params.name}; bare loop on {args.bare_on} labelled patients, batch {args.batch}")
    recipes = ([] if args.skip_shipped else [("shipped", [])]) + \
        [(v.split("=", 1)[0], shlex.split(v.split("=", 1)[1])) for v in args.variant]
    runs: list[dict] = []
    for size in args.train_sizes:
        for seed in args.seeds:
            place = args.work / f"n{size}-seed{seed}"
            data = place / "data"
            if not data.is_dir():
                generate_dataset(data, size, args.test, args.size, args.data_seed + seed)
            patients, labels = test_set(data)
            labelled = load_split(data, "train")
            roles = patients_by_role(labelled, role_spec(settings.split))
            print(f"\n== {size} labelled patients, seed {seed}: roles {len(roles['train'])} train / "
                  f"{len(roles['val'])} val / {len(roles['gate'])} gate; {len(patients)} test patients, "
                  f"{len(labels)} slices", flush=True)
            where = {"size": size, "seed": seed}

            if not args.skip_bare:
                started = time.perf_counter()
                model = bare_loop(labelled if args.bare_on == "all" else roles["train"], args.size, args.epochs,
                                  args.batch, args.precision, seed, device)
                record(runs, args.work, where, f"bare ({args.bare_on})",
                       evaluate(model, patients, labels, args.size, args.precision, device),
                       time.perf_counter() - started)
            for name, sets in recipes:
                started = time.perf_counter()
                speed = [] if args.workers is None else ["--set", f"data.workers={args.workers}"]
                path, report = shipped(data, place / name, args.params, [*speed, *sets], args.epochs,
                                       args.precision, seed, args.device)
                model, _, _ = load_checkpoint(path)
                thresholds = [report["thresholds"][c] for c in CLASSES]
                tuned = evaluate(model, patients, labels, args.size, args.precision, device, thresholds)
                single = evaluate(model, patients, labels, args.size, args.precision, device, context=False)
                record(runs, args.work, where, name, tuned, time.perf_counter() - started,
                       single_micro_f2=single["micro_f2"])
                print(f"{name}: single slice at 0.5 {single['micro_f2']:.4f}", flush=True)
    print_tables(runs)


def paired(runs: list[dict]) -> None:
    """Each recipe minus the bare loop on the same phantom set (size and seed): the mean difference
    with its 95 % t interval over the seeds, so a gap is read against the seed-to-seed spread."""
    from scipy import stats

    bare: dict[tuple, float] = {}
    for r in sorted((r for r in runs if r["recipe"].startswith("bare")), key=lambda r: r["recipe"] != "bare (all)"):
        bare.setdefault((r["size"], r["seed"]), r["micro_f2"])  # the yardstick, bare (all), where it ran
    print("\npaired by phantom set: recipe minus bare loop (all labelled patients where it ran), test micro-F2 "
          "(5-slice context)")
    for size in sorted({r["size"] for r in runs}):
        for recipe in dict.fromkeys(r["recipe"] for r in runs if r["size"] == size and not r["recipe"].startswith("bare")):
            diffs = np.array([r["micro_f2"] - bare[(size, r["seed"])] for r in runs
                              if r["size"] == size and r["recipe"] == recipe and (size, r["seed"]) in bare])
            if not len(diffs):
                continue
            line = f"{size:>4} {recipe:<26} n {len(diffs)}: " + " ".join(f"{d:+.4f}" for d in diffs) + \
                f"; mean {diffs.mean():+.4f}"
            if len(diffs) > 1:
                half = stats.t.ppf(0.975, len(diffs) - 1) * diffs.std(ddof=1) / np.sqrt(len(diffs))
                line += f" [{diffs.mean() - half:+.4f}, {diffs.mean() + half:+.4f}]"
            print(line)


def print_tables(runs: list[dict]) -> None:
    """The tables over seeds, the paired differences to the bare loop, then what context adds over
    single slices per recipe."""
    summarise(runs)
    paired(runs)
    for recipe in dict.fromkeys(r["recipe"] for r in runs if "single_micro_f2" in r):
        chosen = [r for r in runs if r["recipe"] == recipe]
        gain = np.array([r["micro_f2"] - r["single_micro_f2"] for r in chosen])
        print(f"{recipe}: context minus single slice, mean {gain.mean():+.4f} over {len(gain)} runs "
              f"(min {gain.min():+.4f}, max {gain.max():+.4f})")


if __name__ == "__main__":
    main()
