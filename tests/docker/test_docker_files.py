"""Static checks of docker/: no Docker engine runs here, so parse the compose file and the
Dockerfiles and check what would break a `docker compose up` or `docker build`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*Dockerfile"))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line.strip() else "")
            for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_services_of_the_production_stack(compose: dict) -> None:
    assert {"postgres", "minio", "minio-init", "mlflow", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "hemo-train"} <= set(compose["services"])


def test_mlflow_uses_postgres_s3_and_allowed_hosts(compose: dict) -> None:
    mlflow = compose["services"]["mlflow"]
    command = " ".join(mlflow["command"].split())
    assert "--backend-store-uri postgresql://" in command and "@postgres:5432/mlflow" in command
    assert "--artifacts-destination s3://hemo-mlflow/" in command
    assert "--allowed-hosts" in command
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert "CREATE DATABASE mlflow" in (DOCKER / "postgres-init.sql").read_text()


def test_buckets_created_at_start(compose: dict) -> None:
    init = compose["services"]["minio-init"]
    assert "mc mb --ignore-existing hemo/hemo-mlflow hemo/hemo-dvc" in " ".join(init["entrypoint"].split())
    assert compose["services"]["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_airflow_services_share_wiring(compose: dict) -> None:
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-init"):
        env = compose["services"][name]["environment"]
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
        assert env["AIRFLOW_VAR_HEMO_RUNNER"] == "docker"
        assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    commands = {name: compose["services"][name]["command"] for name in ("airflow-apiserver", "airflow-scheduler",
                                                                          "airflow-dag-processor")}
    assert commands == {"airflow-apiserver": ["airflow", "api-server"], "airflow-scheduler": ["airflow", "scheduler"],
                        "airflow-dag-processor": ["airflow", "dag-processor"]}


def test_training_service_reserves_gpus(compose: dict) -> None:
    train = compose["services"]["hemo-train"]
    (device,) = train["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == "all"
    assert train["shm_size"]
    assert "deploy" not in compose["services"]["mlflow"]  # GPU only where it is used


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_files_exist(dockerfile: Path) -> None:
    for instruction, args in _instructions(dockerfile):
        if instruction == "COPY":
            sources = [a for a in args.split() if not a.startswith("--")][:-1]
            for source in sources:
                assert (REPO / source).exists(), f"{dockerfile.name}: COPY source {source} does not exist"


def test_training_image_matches_pinned_torch_and_runs_as_non_root() -> None:
    instructions = _instructions(DOCKER / "Dockerfile")
    base = next(args for ins, args in instructions if ins == "FROM")
    cuda = re.match(r"nvidia/cuda:(\d+\.\d+)", base)
    assert cuda and torch.version.cuda and cuda.group(1) == ".".join(torch.version.cuda.split(".")[:2])
    assert any(ins == "USER" and args.strip() not in ("root", "0") for ins, args in instructions)
    assert ("ENTRYPOINT", '["hemo"]') in instructions
    lock = (REPO / "requirements.lock").read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in lock
    assert any(ins == "RUN" and "-c requirements.lock" in args for ins, args in instructions)


def test_airflow_image_matches_pinned_airflow() -> None:
    base = next(args for ins, args in _instructions(DOCKER / "airflow.Dockerfile") if ins == "FROM")
    version = re.search(r"apache-airflow==([\d.]+)", (REPO / "requirements.lock").read_text()).group(1)
    assert base.startswith(f"apache/airflow:{version}-python3.11")
