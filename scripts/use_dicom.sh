#!/usr/bin/env bash
# Switch a project from JPEG data (data.dvc) to raw DICOM as the versioned input: the DICOM folder is
# tracked by DVC and two `hemo import-dicom` stages in dvc.yaml make data/ from it, so `dvc repro` goes
# from DICOM to predictions (and reruns the import when the DICOM or the importer changes).
#
#   scripts/use_dicom.sh RAW [PRIVATE [DICOMWEB_URL]]
#       RAW      RAW/train/ (DICOM, any nesting), RAW/train_labels.csv (RSNA format), optionally RAW/test/
#                (DICOM to score)
#       PRIVATE  with RAW/test/: a folder outside the project for what names patients (created 0700;
#                an existing one must not be open to others). The test import keeps its slice -> UID
#                mapping there (PRIVATE/test_mapping.csv, 0600), and a `report` stage after score writes
#                the DICOM SR and the FHIR report of every scored exam to PRIVATE/results (`hemo report`;
#                no overlays: the score stage draws none), the project getting counts (reports/report.json).
#                Lost the mapping but not data/test? `dvc repro -f import-test` writes it again.
#       DICOMWEB_URL  the report stage also stores the DICOM objects there (STOW-RS; https, or plain
#                http with HEMO_ALLOW_HTTP=1, for a PACS on a trusted network). Credentials never go in
#                the URL (it is written into dvc.yaml): HEMO_DICOMWEB_TOKEN or _USERNAME/_PASSWORD.
#   Paths and the URL become part of dvc.yaml's commands: letters, digits and ._/:%+=,@~- only.
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
plain() {  # a value that lands in a stage command DVC runs through a shell: no quoting to get wrong
  [[ "$2" =~ ^[A-Za-z0-9._/:%+=,@~-]+$ ]] || {
    echo "error: $1 '$2' holds a space or a character a shell would read (it goes into dvc.yaml's commands); use letters, digits and ._/:%+=,@~- only" >&2
    exit 2; }
}
plain RAW "$RAW"
[ -d "$RAW/train" ] && [ -f "$RAW/train_labels.csv" ] || {
  echo "error: $RAW must hold train/ (DICOM) and train_labels.csv (RSNA labels)" >&2; exit 2; }
if [ -n "$PRIVATE" ]; then
  plain PRIVATE "$PRIVATE"
  [ -d "$RAW/test" ] || { echo "error: PRIVATE $PRIVATE given but $RAW has no test/ to score and report on" >&2; exit 2; }
  PRIVATE=$(realpath -m -- "$PRIVATE")  # absolute, links resolved, before anything is created
  plain PRIVATE "$PRIVATE"
  case "$PRIVATE/" in "$(pwd -P)/"*)
    echo "error: PRIVATE $PRIVATE is inside the project; the mapping and the reports name patients: pass a folder outside it" >&2
    exit 2 ;;
  esac
fi
if [ -n "$PUSH" ]; then
  [ -n "$PRIVATE" ] || { echo "error: DICOMWEB_URL needs PRIVATE (where the objects are written first)" >&2; exit 2; }
  plain DICOMWEB_URL "$PUSH"
  SCHEME=${PUSH%%://*}
  AUTHORITY=${PUSH#*://}
  AUTHORITY=${AUTHORITY%%/*}
  [[ "$AUTHORITY" != *@* ]] || {
    echo "error: DICOMWEB_URL holds credentials (user@host), which would be written into dvc.yaml; set HEMO_DICOMWEB_TOKEN or HEMO_DICOMWEB_USERNAME/_PASSWORD instead" >&2
    exit 2; }
  case "${SCHEME,,}" in
    https) ;;
    http) [ "${HEMO_ALLOW_HTTP:-}" = 1 ] || {
        echo "error: DICOMWEB_URL is plain http (patient data unencrypted): use https, or set HEMO_ALLOW_HTTP=1 for a PACS on a trusted network (e.g. 127.0.0.1)" >&2
        exit 2; }
      ALLOW_HTTP=" --allow-http" ;;
    *) echo "error: DICOMWEB_URL must be an https:// (or http://) DICOMweb service root" >&2; exit 2 ;;
  esac
fi
if [ -n "$PRIVATE" ]; then  # last of the checks: nothing is created for a refused call
  if [ -e "$PRIVATE" ]; then
    [ -d "$PRIVATE" ] || { echo "error: PRIVATE $PRIVATE exists and is not a folder" >&2; exit 2; }
    [ -z "$(find "$PRIVATE" -maxdepth 0 -perm /077)" ] || {
      echo "error: PRIVATE $PRIVATE is open to others (group/other permissions); chmod 700 it or pass a new folder" >&2
      exit 2; }
  else
    mkdir -p -m 700 "$PRIVATE"
  fi
fi
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
    -d outputs/exams.csv -d outputs/predictions_models.json -d "$PRIVATE/test_mapping.csv" -d "$RAW/test" \
    -d hemo_model -d hemo_pipeline \
    --outs-no-cache reports/report.json \
    "hemo report --exams outputs/exams.csv --models outputs/predictions_models.json --mapping $PRIVATE/test_mapping.csv --dicom $RAW/test --out $PRIVATE/results --reports reports${PUSH:+ --push $PUSH${ALLOW_HTTP:-}}"
  # finish ends the parent MLflow run FINISHED: after the report, so a report that failed is not
  # filed under a run already marked finished
  dvc stage add --force -n finish -d outputs/predictions.csv -d reports/report.json "hemo end-run --status FINISHED"
  echo "the report stage writes to $PRIVATE/results${PUSH:+ and stores on $PUSH}"
elif grep -qx report <<<"$(dvc stage list --name-only 2>/dev/null || true)"; then  # no pipe: grep -q would SIGPIPE dvc
  dvc remove report            # an earlier run of this script added it; without PRIVATE there is none
  dvc stage add --force -n finish -d outputs/predictions.csv "hemo end-run --status FINISHED"
fi
echo "dvc.yaml now imports $RAW into data/; run: dvc repro"
