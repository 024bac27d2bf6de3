#!/usr/bin/env bash
# Switch a project from JPEG data (data.dvc) to raw DICOM as the versioned input: the DICOM folder is
# tracked by DVC and two `hemo import-dicom` stages in dvc.yaml make data/ from it, so `dvc repro` goes
# from DICOM to predictions (and reruns the import when the DICOM or the importer changes).
#
#   scripts/use_dicom.sh RAW      RAW/train/ (DICOM, any nesting), RAW/train_labels.csv (RSNA format),
#                                 optionally RAW/test/ (DICOM to score)
#   dvc repro
#
# Output names are salted hashes of the series UIDs: keep the salt (HEMO_DICOM_SALT, or the git-ignored
# .hemo-dicom-salt file) stable, or re-imported patients get new names and new roles.
set -euo pipefail
RAW=${1:?usage: scripts/use_dicom.sh RAW  (RAW/train/, RAW/train_labels.csv, optional RAW/test/)}
RAW=${RAW%/}
[ -d "$RAW/train" ] && [ -f "$RAW/train_labels.csv" ] || {
  echo "error: $RAW must hold train/ (DICOM) and train_labels.csv (RSNA labels)" >&2; exit 2; }
if [ -f data.dvc ]; then
  dvc remove data.dvc          # data/ is now made by the import stages, not added by hand
  rm -rf data
fi
dvc add "$RAW"
dvc stage add --force -n import-train \
  -d "$RAW/train" -d "$RAW/train_labels.csv" -d hemo_model -d hemo_pipeline -p validate \
  -o data/train -o data/train.csv \
  "hemo import-dicom --dicom $RAW/train --labels $RAW/train_labels.csv --split train --out data --reports reports"
if [ -d "$RAW/test" ]; then
  dvc stage add --force -n import-test \
    -d "$RAW/test" -d hemo_model -d hemo_pipeline -p validate \
    -o data/test \
    "hemo import-dicom --dicom $RAW/test --split test --out data --reports reports/import-test"
fi
echo "dvc.yaml now imports $RAW into data/; run: dvc repro"
