"""Benchmark: how often the gate promotes a challenger that is no better, and how often it promotes
one that is clearly better, at the default gate settings.

On a phantom data set, through the real steps (`hemo train`, `hemo evaluate`, `hemo gate`) and a
real (embedded) MLflow registry:

1. a champion: the recipe trained with seed 0 for --epochs epochs, registered and promoted;
2. N "equal" challengers: the same recipe with seeds 1..N (same quality, different noise);
3. N "better" challengers: the same recipe trained --better-epochs epochs, seeds 1..N.

Each challenger is gated against the same champion (the alias is put back after a promotion).
Prints the false-promotion rate (equal challengers promoted) and the true-promotion rate (better
ones promoted), with each decision's gain and interval. Targets: false <= 5%, true >= 80%.
CPU: about (N * (epochs + better_epochs) + epochs) training epochs; see --help for sizes.
Run: `.venv/bin/python benchmarks/gate_error_rates.py [--n 10 --patients 160 --size 64]`; below 500
patients the gate role is smaller than the policy's minimum (50 gate patients, 3 per class), so add
`--set gate.min_patients=10 --set gate.min_positive_patients=1` (the demo profile's waiver).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine_line  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/hemo-gate-error-rates"))
    parser.add_argument("--n", type=int, default=10, help="challengers of each kind")
    parser.add_argument("--patients", type=int, default=160)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="the recipe's epochs (champion, equal challengers)")
    parser.add_argument("--better-epochs", type=int, default=12, help="epochs of the clearly better challengers")
    parser.add_argument("--data-seed", type=int, default=7)
    parser.add_argument("--set", action="append", default=[], help="extra settings for every step")
    args = parser.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    os.chdir(args.work)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    os.environ.pop("HEMO_PARENT_RUN_ID", None)
    from hemo_model.data.synth import generate_dataset
    from hemo_pipeline.cli import main as hemo
    from hemo_pipeline.services import registry

    if not Path("data").is_dir():
        generate_dataset(Path("data"), args.patients, 0, args.size, args.data_seed)
    common = ["--set", f"train.image_size={args.size}", "--set", "train.precision=bf16",
              "--set", "train.cache_images=true", "--device", "cpu", *[x for s in args.set for x in ("--set", s)]]
    print(machine_line())
    print(f"settings: {args.patients} phantom patients at {args.size}px (seed {args.data_seed}); recipe {args.epochs} "
          f"epochs vs better {args.better_epochs} epochs; {args.n} challengers each; gate defaults "
          f"{' '.join(args.set) or ''}")

    def train_and_register(name: str, epochs: int, seed: int) -> str:
        out = Path("outputs") / name
        assert hemo(["train", "--data", "data", "--out", str(out), "--reports", f"reports/{name}", "--epochs",
                     str(epochs), "--seed", str(seed), *common]) == 0
        assert hemo(["evaluate", "--data", "data", "--model", str(out / "best.pt"), "--reports", f"reports/{name}",
                     "--out", f"outputs/{name}.json", *common]) == 0
        return json.loads(Path(f"outputs/{name}.json").read_text())["version"]

    def gate(version: str) -> dict:
        assert hemo(["gate", "--data", "data", "--version", version, "--reports", "reports/gate", *common]) == 0
        return json.loads(Path("reports/gate/gate.json").read_text())

    started = time.perf_counter()
    champion = train_and_register("champion", args.epochs, 0)
    first = gate(champion)
    if not first["promoted"]:
        assert hemo(["promote", "--version", champion, "--reason", "benchmark baseline"]) == 0
    print(f"champion v{champion}: gate micro-F2 {first['challenger_micro_f2']:.4f} (all-positive "
          f"{first['all_positive_micro_f2']:.4f}, {first['gate_patients']} gate patients)", flush=True)

    outcomes: dict[str, list[dict]] = {"equal": [], "better": []}
    for i in range(1, args.n + 1):
        for kind, epochs in (("equal", args.epochs), ("better", args.better_epochs)):
            version = train_and_register(f"{kind}-{i}", epochs, i)
            decision = gate(version)
            if registry.alias_version(registry.CHAMPION) != champion:  # keep gating against the same champion
                registry.client().set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, champion)
            outcomes[kind].append(decision)
            print(f"{kind:>6} #{i} v{version}: micro-F2 {decision['challenger_micro_f2']:.4f} gain "
                  f"{decision['gain']:+.4f} [{decision['gain_interval'][0]:+.4f}, {decision['gain_interval'][1]:+.4f}] "
                  f"-> {'PROMOTED' if decision['promoted'] else 'kept champion'}", flush=True)
    false_rate = sum(d["promoted"] for d in outcomes["equal"]) / args.n
    true_rate = sum(d["promoted"] for d in outcomes["better"]) / args.n
    print(f"\nfalse-promotion rate (equal challengers promoted): {false_rate:.0%} "
          f"({sum(d['promoted'] for d in outcomes['equal'])}/{args.n})")
    print(f"true-promotion rate (better challengers promoted): {true_rate:.0%} "
          f"({sum(d['promoted'] for d in outcomes['better'])}/{args.n})")
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
