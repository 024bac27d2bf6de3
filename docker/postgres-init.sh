#!/bin/bash
# One database user per service, neither a superuser: airflow owns db airflow, mlflow owns db
# mlflow, and each may connect to its own database only. Run once by the postgres image's entrypoint
# (docker-entrypoint-initdb.d) on an empty data folder, as the superuser that only this container's
# init uses. Names and passwords come from the environment (docker/.env) and reach psql through
# \getenv, never through its command line; psql quotes them (:"name" identifiers, :'pw' literals).
set -euo pipefail
: "${AIRFLOW_DB_USER:?}" "${AIRFLOW_DB_PASSWORD:?}" "${MLFLOW_DB_USER:?}" "${MLFLOW_DB_PASSWORD:?}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres <<'SQL'
\getenv airflow_user AIRFLOW_DB_USER
\getenv airflow_password AIRFLOW_DB_PASSWORD
\getenv mlflow_user MLFLOW_DB_USER
\getenv mlflow_password MLFLOW_DB_PASSWORD
CREATE ROLE :"airflow_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'airflow_password';
CREATE ROLE :"mlflow_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'mlflow_password';
CREATE DATABASE airflow OWNER :"airflow_user";
CREATE DATABASE mlflow OWNER :"mlflow_user";
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE mlflow FROM PUBLIC;
REVOKE ALL ON DATABASE postgres FROM PUBLIC;
SQL
