"""Join the shards of a sharded `hemo score` into the files an unsharded run writes.

`hemo score --shard I/N` scores patients I, I+N, ... of the folder (in folder order) into
<out>.shard-I-of-N.csv and its siblings; after all N have run (Airflow dynamic task mapping, a
Kubeflow parallel-for, any batch system), this step checks that every shard used the same model
versions, context, precision and thresholds, puts the rows back in folder order and writes <out>,
<out>_leaderboard.csv, <out>_probabilities.csv, <out>_models.json and the per-exam file atomically: byte for byte what
one unsharded run writes (on the CPU; GPUs may differ in the last bits between batchings).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections import Counter
from pathlib import Path

from hemo_model import CLASSES
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.files import write_csv_atomic, write_json_atomic
from hemo_pipeline.services.score_files import EXAM_CSV_COLUMNS, exams_file, shard_out, sibling

SLICE_KEY = re.compile(r"(?P<hash>[A-Za-z0-9]+)_(?P<k>[0-9]+)(?:\.(?:jpg|png)|_(?P<cls>[a-z]+))")
"""A slice id of a shard file, matched whole (``fullmatch``): ``<hash>_<k>.jpg`` (or ``.png``) in the
DLCV and probability files, ``<hash>_<k>_<class>`` in the leaderboard. ``$`` or a prefix match
would let ``"x_1.jpg\n"`` or ``"x_1;anything"`` through into the merged files."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("outputs/predictions.csv"), help="the unsharded file to write")
    parser.add_argument("--shards", type=int, required=True, help="N, the number of shards that were scored")
    parser.add_argument("--exams", type=Path, help="the unsharded per-exam file (default: as `hemo score` names it)")


def _rows(path: Path) -> tuple[list[str], list[list[str]]]:
    if not path.is_file():
        raise UserError(f"{path} is missing: run every shard (`hemo score --shard I/N`) before merging")
    with path.open(newline="") as handle:
        header, *rows = list(csv.reader(handle))
    return header, rows


def _order(slice_id: str) -> tuple[str, int, int]:
    """Folder order: patient (ID_<hash>, sorted), slice index k, then the class in CLASSES order
    (the leaderboard's <hash>_<k>_<class> rows)."""
    match = SLICE_KEY.fullmatch(slice_id)
    if match is None or (match["cls"] is not None and match["cls"] not in CLASSES):
        raise UserError(f"unexpected slice id {slice_id!r} in a shard file")
    return match["hash"], int(match["k"]), CLASSES.index(match["cls"]) if match["cls"] else -1


def _merged_exams(shards: list[Path]) -> tuple[list[str], list[list[str]]]:
    """The shards' per-exam rows in folder order (patient folders sorted), each exam once."""
    rows: list[list[str]] = []
    for shard in shards:
        header, shard_rows = _rows(shard)
        if header != list(EXAM_CSV_COLUMNS):
            raise UserError(f"{shard} has header {header}, expected {list(EXAM_CSV_COLUMNS)}")
        rows += shard_rows
    names = [row[0] for row in rows]
    if len(set(names)) != len(names):
        raise UserError(f"an exam appears in two shards of {shards[0]}; merge only shards of one --shards count")
    return list(EXAM_CSV_COLUMNS), sorted(rows, key=lambda row: row[0])


def run(args: argparse.Namespace) -> int:
    if args.shards < 1:
        raise UserError("--shards must be at least 1")
    shards = [shard_out(args.out, i, args.shards) for i in range(args.shards)]
    meta = []
    for shard in shards:
        models = shard.with_name(f"{shard.stem}_models.json")
        if not models.is_file():
            raise UserError(f"{models} is missing: run every shard (`hemo score --shard I/N`) before merging")
        meta.append(json.loads(models.read_text()))
    if any(m != meta[0] for m in meta[1:]):
        raise UserError("the shards were scored with different models, context, precision or thresholds "
                        f"({[m['models'] for m in meta]}); score every shard with one --model version")
    outputs = {"": (args.out, 1), "leaderboard": (sibling(args.out, "leaderboard"), 0),
               "probabilities": (sibling(args.out, "probabilities"), 1)}
    merged: dict[Path, tuple[list[str], list[list[str]]]] = {}
    for suffix, (target, id_column) in outputs.items():
        header: list[str] = []
        rows: list[list[str]] = []
        for shard in shards:
            shard_header, shard_rows = _rows(sibling(shard, suffix) if suffix else shard)
            header = header or shard_header
            if shard_header != header:
                raise UserError(f"{shard} has header {shard_header}, the other shards {header}")
            rows += shard_rows
        ids = [row[id_column] for row in rows]
        if len(set(ids)) != len(ids):
            raise UserError(f"a slice appears in two shards of {target}; merge only shards of one --shards count")
        merged[target] = (header, sorted(rows, key=lambda row: _order(row[id_column])))
    exams = args.exams or exams_file(args.out)
    merged[exams] = _merged_exams([shard_out(exams, i, args.shards) for i in range(args.shards)])
    slices_per_exam = Counter(row[0] for row in merged[args.out][1])
    exam_counts = {row[0]: row[1] for row in merged[exams][1]}
    if exam_counts != {name: str(n) for name, n in slices_per_exam.items()}:
        raise UserError(f"the exam shards of {exams} do not match the slice shards of {args.out} (exams or slice "
                        "counts differ: files of another run?); score every shard again")
    for target, (header, rows) in merged.items():
        write_csv_atomic(target, header, rows)
    write_json_atomic(args.out.with_name(f"{args.out.stem}_models.json"), meta[0])
    print(f"merge-scores: {len(merged[args.out][1])} slices from {args.shards} shards -> {args.out}")
    return 0
