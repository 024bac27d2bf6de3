#!/bin/sh
# MinIO's accounts, made by the only client that holds the root keys (this one-shot container:
# MC_HOST_hemo in its environment). The buckets, then one user per service allowed only its own
# bucket (docker/minio-policies/<bucket>.json): MINIO_MLFLOW_* for MLflow's artifact store
# (hemo-mlflow), MINIO_DVC_* for the DVC remote (hemo-dvc). Safe to run again: a user's secret is
# reset to docker/.env's, the policy rewritten and attached once. Secret keys reach `mc` on stdin
# (printf is a shell builtin), never on a command line.
set -eu
: "${MINIO_MLFLOW_ACCESS_KEY:?}" "${MINIO_MLFLOW_SECRET_KEY:?}" "${MINIO_DVC_ACCESS_KEY:?}" "${MINIO_DVC_SECRET_KEY:?}"
POLICIES=/opt/hemo-init/minio-policies

mc mb --ignore-existing hemo/hemo-mlflow hemo/hemo-dvc

account() {  # <bucket = policy name> <access key> <secret key>
    printf '%s\n' "$3" | mc admin user add hemo "$2" >/dev/null
    mc admin policy create hemo "$1" "$POLICIES/$1.json" >/dev/null
    if ! mc admin user info hemo "$2" | grep -q "$1"; then
        mc admin policy attach hemo "$1" --user "$2" >/dev/null
    fi
    echo "minio-init: user $2 may use bucket $1 only"
}

account hemo-mlflow "$MINIO_MLFLOW_ACCESS_KEY" "$MINIO_MLFLOW_SECRET_KEY"
account hemo-dvc "$MINIO_DVC_ACCESS_KEY" "$MINIO_DVC_SECRET_KEY"
