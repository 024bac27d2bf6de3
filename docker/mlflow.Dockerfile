# MLflow tracking server with the PostgreSQL driver, the S3 client and the basic-auth app
# (mlflow[auth] brings Flask-WTF) for the production stack; mlflow-init runs docker/mlflow_init.py
# in this image (bind-mounted by compose.yaml).
# The driver: compose's backend URI is postgresql://, which SQLAlchemy 2.1 (what mlflow 3.17.2
# installs) maps to psycopg 3, no longer psycopg2 (seen: "No module named 'psycopg'" against a real
# PostgreSQL, tests/e2e/stack_services.py).
FROM python:3.11-slim
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg[binary]==3.3.9" "psycopg2-binary==2.9.13" "boto3"
RUN useradd --create-home mlflow && mkdir -p /var/lib/mlflow && chown mlflow /var/lib/mlflow
USER mlflow
ENV MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false \
    TORCH_FORCE_WEIGHTS_ONLY_LOAD=1
EXPOSE 5000
ENTRYPOINT ["mlflow"]
