"""Show which role every labelled patient has: train, val (model selection) or gate (held out).

A patient's role is a pure function of its key and `split.salt` (hash buckets of sizes
`split.val_fraction` / `split.gate_fraction`), so adding, removing or reordering patients never
moves anyone else. The key is the patient's pseudonym in series.csv (written by `hemo
import-dicom`: every scan of one person shares it, so all of them share one role) or, without a
row there, the folder name. Writes JSON {"roles": {dirname: role}, "counts": ... (folders),
"patient_counts": ..., "split": ...} to --out (default reports/split.json, the file `hemo train`
also writes) and prints the counts. Reads only train.csv and series.csv: no images, no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hemo_model.data.layout import LABELS_FILE, DataError, labelled_patients
from hemo_model.data.series_index import patients_of, read_series_index
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
    dirnames = labelled_patients(root)
    try:
        keys = patients_of(dirnames, read_series_index(root))
    except DataError as exc:
        raise UserError(str(exc)) from exc
    report = assignment(dirnames, settings.split, keys)
    write_json_atomic(args.out, report)
    counts, people = report["counts"], report["patient_counts"]
    if people == counts:
        print(f"split of {sum(counts.values())} patients (salt {settings.split.salt!r}): train {counts['train']}, "
              f"val {counts['val']}, gate {counts['gate']} -> {args.out}")
    else:
        print(f"split of {sum(people.values())} patients ({sum(counts.values())} scans; salt {settings.split.salt!r}): "
              + ", ".join(f"{role} {people[role]} ({counts[role]} scans)" for role in ("train", "val", "gate"))
              + f" -> {args.out}")
    return 0
