#!/bin/bash
# recipe_vs_bare.py over sizes x seeds x recipes, one process per cell, all at once: how the README's
# "Model quality" tables were measured on one GPU machine (18 processes share an H200 in about 4 min).
# Every process generates nothing: each (size, seed) phantom set is written once and copied.
#
#   PYTHON=.venv/bin/python OUT=/tmp/matrix benchmarks/recipe_matrix.sh
#   SIZES="48 80" SEEDS="0 1 2" RECIPES="bare shipped rf refit rfrefit" DEVICE=cuda EPOCHS=20 TEST=24
#
# OUT gets results.json (every run, merged), summary.txt (the tables) and logs/ (one log per cell).
# On a CPU run one cell at a time instead: two torch processes on two cores slow each other badly.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:?set OUT to a folder for the results}
WORK=${WORK:-/tmp/hemo-recipe-matrix}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
if [ -e "$WORK" ] && [ ! -e "$WORK/.hemo-recipe-matrix" ]; then  # never wipe a folder this script did not make
  echo "WORK=$WORK exists and is not a recipe_matrix work folder; pick another"; exit 2
fi
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT/logs" && touch "$WORK/.hemo-recipe-matrix" || exit 2
SIZES=${SIZES:-48 80} SEEDS=${SEEDS:-0 1 2} TEST=${TEST:-24} WORK=$WORK "$PY" - <<'PY' || exit 2
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from hemo_model.data.synth import generate_dataset

cells = [(int(n), int(s)) for n in os.environ["SIZES"].split() for s in os.environ["SEEDS"].split()]


def make(cell: tuple[int, int]) -> None:  # the phantom seeds recipe_vs_bare.py uses (--data-seed 123 + seed)
    generate_dataset(Path(os.environ["WORK"]) / f"data-n{cell[0]}-s{cell[1]}", cell[0], int(os.environ["TEST"]), 128,
                     123 + cell[1])


with ProcessPoolExecutor(min(len(cells), os.cpu_count() or 1)) as pool:
    list(pool.map(make, cells))
PY
B=("$PY" benchmarks/recipe_vs_bare.py --device "${DEVICE:-cuda}" --threads 1 --workers "${WORKERS:-1}"
   --epochs "${EPOCHS:-20}" --test "${TEST:-24}")
for size in ${SIZES:-48 80}; do for seed in ${SEEDS:-0 1 2}; do for recipe in ${RECIPES:-bare shipped rf}; do
  case $recipe in
    bare) extra=(--skip-shipped);;
    shipped) extra=(--skip-bare);;
    rf) extra=(--skip-bare --skip-shipped --variant "rf=--set train.sampling=repeat_factor");;
    refit) extra=(--skip-bare --skip-shipped --variant "refit=--set train.refit_on_val=true");;
    rfrefit) extra=(--skip-bare --skip-shipped
                    --variant "rf+refit=--set train.sampling=repeat_factor --set train.refit_on_val=true");;
    *) echo "unknown recipe $recipe (bare shipped rf refit rfrefit)"; exit 2;;
  esac
  cell=$WORK/$recipe-n$size-s$seed
  mkdir -p "$cell/n$size-seed$seed" && cp -r "$WORK/data-n$size-s$seed" "$cell/n$size-seed$seed/data"
  "${B[@]}" --work "$cell" --train-sizes "$size" --seeds "$seed" "${extra[@]}" > "$OUT/logs/$recipe-n$size-s$seed.log" 2>&1 &
done; done; done
failed=0
for job in $(jobs -p); do wait "$job" || failed=$((failed + 1)); done
"$PY" - "$WORK" "$OUT/results.json" <<'PY'
import json, sys
from pathlib import Path
runs = [run for f in sorted(Path(sys.argv[1]).glob("*/results.json")) for run in json.loads(f.read_text())]
Path(sys.argv[2]).write_text(json.dumps(runs, indent=1))
PY
"$PY" benchmarks/recipe_vs_bare.py --summarise "$OUT/results.json" | tee "$OUT/summary.txt"
echo "$failed cell(s) failed (their logs are in $OUT/logs)"
exit $((failed > 0))
