"""Show which role every labelled patient has: train, val (model selection) or gate (held out).

A patient's role is a pure function of its folder name and `split.salt` (hash buckets of sizes
`split.val_fraction` / `split.gate_fraction`), so adding, removing or reordering patients never
moves anyone else. Writes JSON {"roles": {dirname: role}, "counts": ..., "split": ...} to --out
(default reports/split.json, the file `hemo train` also writes) and prints the counts.
Reads only train.csv: no images, no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hemo_model.data.layout import LABELS_FILE, labelled_patients
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.files import write_json_atomic
from hemo_pipeline.services.patient_roles import assignment
from hemo_pipeline.services.step_args import add_settings_arguments, data_root, settings_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="data folder holding train.csv (params data.root)")
    parser.add_argument("--out", type=Path, default=Path("reports/split.json"), help="where the JSON goes")
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    root = data_root(args, settings)
    if not (root / LABELS_FILE).is_file():
        raise UserError(f"{root / LABELS_FILE} not found: pass --data pointing at the folder holding train.csv")
    report = assignment(labelled_patients(root), settings.split)
    write_json_atomic(args.out, report)
    counts = report["counts"]
    print(f"split of {sum(counts.values())} patients (salt {settings.split.salt!r}): train {counts['train']}, "
          f"val {counts['val']}, gate {counts['gate']} -> {args.out}")
    return 0
