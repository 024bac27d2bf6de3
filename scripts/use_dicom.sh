#!/usr/bin/env bash
# Switch a project from JPEG data (data.dvc) to raw DICOM as the versioned input: the DICOM folder is
# tracked by DVC and two `hemo import-dicom` stages in dvc.yaml make data/ from it, so `dvc repro` goes
# from DICOM to predictions (and reruns the import when the DICOM or the importer changes).
#
#   scripts/use_dicom.sh RAW [PRIVATE [DICOMWEB_URL]]
#       RAW      RAW/train/ (DICOM, any nesting), RAW/train_labels.csv (RSNA format), optionally RAW/test/
#                (DICOM to score)
#       PRIVATE  with RAW/test/: a folder outside the project for what names patients. The test import
#                keeps its slice -> UID mapping there (PRIVATE/test_mapping.csv, 0600), and a `report`
#                stage after score writes the DICOM SR, overlays and FHIR report of every scored exam to
#                PRIVATE/results (`hemo report`), the project getting counts only (reports/report.json)
#       DICOMWEB_URL  the report stage also stores the DICOM objects there (STOW-RS; https, or plain
#                http with HEMO_ALLOW_HTTP=1, for a PACS on a trusted network; credentials as for the import)
#   dvc repro
#
# Output names are salted hashes of the series UIDs: keep the salt (HEMO_DICOM_SALT, or the git-ignored
# .hemo-dicom-salt file) stable, or re-imported patients get new names and new roles.
set -euo pipefail
USAGE="usage: scripts/use_dicom.sh RAW [PRIVATE [DICOMWEB_URL]]  (RAW/train/, RAW/train_labels.csv, optional RAW/test/)"
RAW=${1:?$USAGE}
RAW=${RAW%/}
PRIVATE=${2:-}
PUSH=${3:-}
[ -d "$RAW/train" ] && [ -f "$RAW/train_labels.csv" ] || {
  echo "error: $RAW must hold train/ (DICOM) and train_labels.csv (RSNA labels)" >&2; exit 2; }
if [ -n "$PRIVATE" ]; then
  [ -d "$RAW/test" ] || { echo "error: PRIVATE $PRIVATE given but $RAW has no test/ to score and report on" >&2; exit 2; }
  mkdir -p "$PRIVATE"
  PRIVATE=$(cd "$PRIVATE" && pwd -P)
  case "$PRIVATE/" in "$(pwd -P)/"*)
    echo "error: PRIVATE $PRIVATE is inside the project; the mapping and the reports name patients: pass a folder outside it" >&2
    exit 2 ;;
  esac
  chmod 700 "$PRIVATE"
fi
[ -z "$PUSH" ] || [ -n "$PRIVATE" ] || { echo "error: DICOMWEB_URL needs PRIVATE (where the objects are written first)" >&2; exit 2; }
case "$PUSH" in
  http://*) [ "${HEMO_ALLOW_HTTP:-}" = 1 ] || {
      echo "error: $PUSH is plain http (patient data unencrypted): use https, or set HEMO_ALLOW_HTTP=1 for a PACS on a trusted network (e.g. 127.0.0.1)" >&2
      exit 2; }
    PUSH="$PUSH --allow-http" ;;
esac
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
  MAPPING=${PRIVATE:+ --mapping $PRIVATE/test_mapping.csv}
  dvc stage add --force -n import-test \
    -d "$RAW/test" -d hemo_model -d hemo_pipeline -p validate \
    -o data/test \
    "hemo import-dicom --dicom $RAW/test --split test --out data --reports reports/import-test$MAPPING"
fi
if [ -n "$PRIVATE" ]; then
  # The mapping is a dependency DVC hashes where it lies (outside the project); the objects it names
  # patients in stay there too. Re-running writes the same objects (UIDs derived from the series and
  # the model version) and a PACS gets no second copy.
  dvc stage add --force -n report \
    -d outputs/exams.csv -d "$PRIVATE/test_mapping.csv" -d "$RAW/test" -d hemo_model -d hemo_pipeline \
    --outs-no-cache reports/report.json \
    "hemo report --exams outputs/exams.csv --models outputs/predictions_models.json --mapping $PRIVATE/test_mapping.csv --dicom $RAW/test --out $PRIVATE/results --reports reports${PUSH:+ --push $PUSH}"
  echo "the report stage writes to $PRIVATE/results${PUSH:+ and stores on ${PUSH% --allow-http}}"
fi
echo "dvc.yaml now imports $RAW into data/; run: dvc repro"
