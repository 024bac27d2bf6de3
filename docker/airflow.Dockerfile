# Airflow image for hemo: Airflow 3.3.2 with the docker and cncf.kubernetes providers, the project
# (so the DAG's runners and the `local` runner work) and the DAG baked into the dags folder.
#   docker build -f docker/airflow.Dockerfile -t hemo-airflow:0.1.0 .
FROM apache/airflow:3.3.2-python3.11

USER root
RUN apt-get update && apt-get install -y --no-install-recommends git && rm -rf /var/lib/apt/lists/*
USER airflow
# The DAG's local runner and end_run load models/checkpoints in this image too: never pickled code.
ENV MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false \
    TORCH_FORCE_WEIGHTS_ONLY_LOAD=1

COPY --chown=airflow:root requirements.lock pyproject.toml README.md /opt/hemo-src/
COPY --chown=airflow:root hemo_model /opt/hemo-src/hemo_model
COPY --chown=airflow:root hemo_pipeline /opt/hemo-src/hemo_pipeline
# The lock pins Airflow itself to 3.3.2, the same as the base image. The FAB provider is the
# production auth manager (compose.yaml selects it).
RUN pip install --no-cache-dir -c /opt/hemo-src/requirements.lock "/opt/hemo-src" apache-airflow-providers-fab
COPY --chown=airflow:root dags/hemo_retraining.py /opt/airflow/dags/hemo_retraining.py
