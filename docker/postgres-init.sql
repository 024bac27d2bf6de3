-- A second database on the same PostgreSQL for the MLflow backend store.
CREATE DATABASE mlflow;
