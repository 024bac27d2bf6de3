#!/bin/sh
# The private files that services and step containers read their credentials from, written as
# root into two named volumes and handed to the uid/gid the steps and the Airflow scheduler run
# as (HEMO_CONTAINER_UID/GID), mode 0400:
#   hemo-step-secrets/hemo-step.env     MLflow writer login, KEY=value (hemo_pipeline/services/credentials.py)
#   hemo-airflow-secrets/dvc-credentials DVC's MinIO keys, AWS shared-credentials format
# Containers get the volume and a variable holding the file's path (HEMO_SECRETS_FILE,
# AWS_SHARED_CREDENTIALS_FILE), so no value shows in `docker inspect` of a step or in a task log.
# printf is a shell builtin: the values never reach a command line.
set -eu
: "${MLFLOW_WRITER_USERNAME:?}" "${MLFLOW_WRITER_PASSWORD:?}" "${MINIO_DVC_ACCESS_KEY:?}" "${MINIO_DVC_SECRET_KEY:?}"
owner="${HEMO_CONTAINER_UID:?}:${HEMO_CONTAINER_GID:?}"
root="${HEMO_SECRETS_ROOT:-/secrets}"  # the volumes are mounted at $root/step and $root/airflow
umask 077

write() {  # <file> ; content on stdin
    cat > "$1.new"
    chown "$owner" "$1.new"
    chmod 0400 "$1.new"
    mv -f "$1.new" "$1"
}

printf 'MLFLOW_TRACKING_USERNAME=%s\nMLFLOW_TRACKING_PASSWORD=%s\n' "$MLFLOW_WRITER_USERNAME" "$MLFLOW_WRITER_PASSWORD" \
    | write "$root/step/hemo-step.env"
printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$MINIO_DVC_ACCESS_KEY" "$MINIO_DVC_SECRET_KEY" \
    | write "$root/airflow/dvc-credentials"
echo "secrets-init: step and scheduler credentials written for uid:gid $owner (mode 0400)"
