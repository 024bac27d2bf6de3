"""Show which role every labelled patient has: train, val (model selection) or gate (held out).

A patient's role is a pure function of its key and `split.salt` (hash buckets of sizes
`split.val_fraction` / `split.gate_fraction`), so adding, removing or reordering patients never
moves anyone else. The key is the patient's pseudonym in series.csv (written by `hemo
import-dicom`: every scan of one person shares it, so all of them share one role) or, without a
row there, the folder name. Writes JSON {"roles": {dirname: role}, "counts": ... (folders),
"patient_counts": ..., "split": ...} to --out (default reports/split.json, the file `hemo train`
also writes) and prints the counts, then one line per role saying whether it can do its job
(train: examples of every class; val: choose the epoch and refinement; gate: judge promotions;
hemo_pipeline.services.role_capacity). Reads only train.csv and series.csv: no images, no torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from hemo_model import CLASSES
from hemo_model.data.layout import LABELS_FILE, DataError, read_label_rows
from hemo_model.data.series_index import patients_of, read_series_index
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.files import write_json_atomic
from hemo_pipeline.services.patient_roles import assignment
from hemo_pipeline.services.role_capacity import RoleContents, role_lines
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
    labels = _labels_by_scan(root)
    dirnames = sorted(labels)
    try:
        keys = patients_of(dirnames, read_series_index(root))
    except DataError as exc:
        raise UserError(str(exc)) from exc
    report = assignment(dirnames, settings.split, keys)
    contents = {role: RoleContents.of([labels[d] for d in dirnames if report["roles"][d] == role],
                                      [keys[d] for d in dirnames if report["roles"][d] == role])
                for role in ("train", "val", "gate")}
    report["jobs"] = lines = role_lines(contents, settings.selection, settings.gate, settings.train.refit_on_val,
                                        settings.evaluate)
    write_json_atomic(args.out, report)
    counts, people = report["counts"], report["patient_counts"]
    if people == counts:
        print(f"split of {sum(counts.values())} patients (salt {settings.split.salt!r}): train {counts['train']}, "
              f"val {counts['val']}, gate {counts['gate']} -> {args.out}")
    else:
        print(f"split of {sum(people.values())} patients ({sum(counts.values())} scans; salt {settings.split.salt!r}): "
              + ", ".join(f"{role} {people[role]} ({counts[role]} scans)" for role in ("train", "val", "gate"))
              + f" -> {args.out}")
    print("\n".join(lines))
    return 0


def _labels_by_scan(root: Path) -> dict[str, np.ndarray]:
    """Each scan's (slices, 5) labels from train.csv, read as numbers (no image is opened)."""
    _, rows = read_label_rows(root / LABELS_FILE)
    by_scan: dict[str, list[list[float]]] = {}
    for row in rows:
        try:
            by_scan.setdefault(row.values["dirname"], []).append([float(row.values[c]) for c in CLASSES])
        except (KeyError, ValueError) as exc:
            raise UserError(f"{root / LABELS_FILE} row {row.line}: not a label row ({type(exc).__name__}: {exc}); "
                            "run `hemo validate` for a full report") from exc
    by_scan.pop("", None)
    return {d: np.array(v) for d, v in by_scan.items()}
