"""Static checks of docker/: parse the compose file and the Dockerfiles and check what would break
a `docker compose up` or `docker build`. The image is built and run for real by `make image` and
tests/e2e/test_containers_*.py / test_stack_*.py where a Docker engine runs."""

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
    assert {"postgres", "minio", "minio-init", "mlflow", "mlflow-init", "secrets-init", "docker-proxy", "airflow-init",
            "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "hemo-train"} <= set(compose["services"])


def test_mlflow_uses_postgres_s3_and_allowed_hosts(compose: dict) -> None:
    mlflow = compose["services"]["mlflow"]
    command = " ".join(mlflow["command"].split())
    backend = mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql://") and backend.endswith("@postgres:5432/mlflow")
    assert "--artifacts-destination s3://hemo-mlflow/" in command
    assert "--allowed-hosts" in command
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    init = (DOCKER / "postgres-init.sh").read_text()
    assert 'CREATE DATABASE mlflow OWNER :"mlflow_user"' in init and 'CREATE DATABASE airflow OWNER :"airflow_user"' in init
    mounts = compose["services"]["postgres"]["volumes"]
    assert "./postgres-init.sh:/docker-entrypoint-initdb.d/10-hemo-databases.sh:ro" in mounts


def test_buckets_created_at_start(compose: dict) -> None:
    init = compose["services"]["minio-init"]
    assert init["entrypoint"] == ["/bin/sh", "/opt/hemo-init/minio-init.sh"]
    assert "mc mb --ignore-existing hemo/hemo-mlflow hemo/hemo-dvc" in (DOCKER / "minio-init.sh").read_text()
    assert compose["services"]["mlflow"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("script", ["postgres-init.sh", "minio-init.sh", "secrets-init.sh"])
def test_init_scripts_are_valid_shell(script: str) -> None:
    import subprocess

    shell = "bash" if script == "postgres-init.sh" else "sh"
    result = subprocess.run([shell, "-n", str(DOCKER / script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def test_every_bind_mounted_file_of_the_stack_exists(compose: dict) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = str(volume).split(":")[0]
            if source.startswith("./"):
                assert (DOCKER / source).exists(), f"{name} mounts {source}, which does not exist"


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


def _default_base(dockerfile: Path) -> str:
    """The image a Dockerfile builds FROM by default: its FROM, or the default of the ARG it names."""
    instructions = _instructions(dockerfile)
    base = next(args for ins, args in instructions if ins == "FROM").split()[0]
    named = re.fullmatch(r"\$\{?(\w+)\}?", base)
    if not named:
        return base
    return next(args.split("=", 1)[1] for ins, args in instructions
                if ins == "ARG" and args.startswith(f"{named.group(1)}="))


def test_training_image_matches_pinned_torch_and_runs_as_non_root() -> None:
    instructions = _instructions(DOCKER / "Dockerfile")
    base = _default_base(DOCKER / "Dockerfile")
    cuda = re.match(r"nvidia/cuda:(\d+\.\d+)", base)
    assert cuda and torch.version.cuda and cuda.group(1) == ".".join(torch.version.cuda.split(".")[:2])
    assert any(ins == "USER" and args.strip() not in ("root", "0") for ins, args in instructions)
    assert ("ENTRYPOINT", '["hemo"]') in instructions
    lock = (REPO / "requirements.lock").read_text()
    assert f"torch=={torch.__version__.split('+')[0]}" in lock
    assert any(ins == "RUN" and "-c requirements.lock" in args for ins, args in instructions)


def test_training_image_base_is_a_build_argument_and_the_source_goes_in_through_dockerignore() -> None:
    instructions = _instructions(DOCKER / "Dockerfile")
    assert instructions[0] == ("ARG", f"BASE_IMAGE={_default_base(DOCKER / 'Dockerfile')}")
    assert ("FROM", "${BASE_IMAGE}") in instructions
    assert ("COPY", ". .") in instructions  # the whole tree: no list of packages to keep current
    ignored = {line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    # never in an image: secrets, environments, data and what the pipeline makes
    assert {"docker/.env", "**/.env", ".hemo-dicom-salt", ".dvc/config.local", ".git", ".venv", "data", "outputs",
            "reports", "mlflow.db"} <= ignored
    # pip is pointed at an index, never handed credentials through the build
    assert not any("PASSWORD" in args or "TOKEN" in args for ins, args in instructions if ins == "ARG")


def test_the_cpu_host_gpu_hook_does_nothing() -> None:
    import subprocess

    hook = DOCKER / "cpu-host" / "nvidia-container-runtime-hook"
    result = subprocess.run([str(hook), "prestart"], input='{"ociVersion": "1.0.2", "pid": 1}', capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""
    code = [line for line in hook.read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert code == ["cat >/dev/null", "exit 0"]


def test_airflow_image_matches_pinned_airflow() -> None:
    base = _default_base(DOCKER / "airflow.Dockerfile")
    version = re.search(r"apache-airflow==([\d.]+)", (REPO / "requirements.lock").read_text()).group(1)
    assert base.startswith(f"apache/airflow:{version}-python3.11")


# --- safe by default (no weak secrets, authenticated MLflow, no socket in the API server) ---


SECRET = re.compile(r"PASSWORD|SECRET|_KEY|_USER\b|USERNAME")


def test_every_secret_is_required_with_no_default() -> None:
    text = (DOCKER / "compose.yaml").read_text()
    variables = re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)([^}]*)\}", text)  # $${...} is the container's own shell
    secrets = {(name, rest) for name, rest in variables if SECRET.search(name)}
    assert {name for name, _ in secrets} >= {"POSTGRES_SUPERUSER_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD",
                                            "MINIO_ROOT_PASSWORD", "MINIO_MLFLOW_SECRET_KEY", "MINIO_DVC_SECRET_KEY",
                                            "AIRFLOW_JWT_SECRET", "AIRFLOW_FERNET_KEY", "MLFLOW_ADMIN_PASSWORD",
                                            "MLFLOW_WRITER_PASSWORD", "MLFLOW_READER_PASSWORD",
                                            "MLFLOW_FLASK_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD"}
    loose = sorted(f"${{{name}{rest}}}" for name, rest in secrets if not rest.startswith(":?"))
    assert loose == [], "secrets with a default or silently empty"
    assert not re.search(r"change-me|\bhemo-secret\b", text)
    example = (DOCKER / ".env.example").read_text()
    secret = re.compile(r"[A-Z_]*(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY)=")
    assert all(line.endswith("=") for line in example.splitlines() if secret.match(line))


def test_env_file_with_real_secrets_is_git_ignored() -> None:
    import subprocess

    result = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert result.returncode == 0, "docker/.env must be ignored by git"


def test_mlflow_requires_login_and_listens_on_loopback(compose: dict) -> None:
    mlflow = compose["services"]["mlflow"]
    assert "--app-name basic-auth" in " ".join(mlflow["command"].split())
    env = mlflow["environment"]
    assert env["MLFLOW_AUTH_CONFIG_PATH"] and env["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"].startswith("${MLFLOW_ADMIN_PASSWORD:?")
    assert "mlflow[auth]" in (DOCKER / "mlflow.Dockerfile").read_text()
    ini = (DOCKER / "mlflow-basic-auth.ini").read_text()
    assert "database_uri" in ini and "admin_password" not in ini
    # the clients sign in as the pipeline's writer, read from a mounted file (tests/security/test_stack.py)
    for name in ("airflow-scheduler", "hemo-train"):
        client_env = compose["services"][name]["environment"]
        assert client_env["HEMO_SECRETS_FILE"] == "/run/hemo-secrets/hemo-step.env"
        assert "hemo-step-secrets:/run/hemo-secrets:ro" in compose["services"][name]["volumes"]


def test_published_ports_are_loopback_only(compose: dict) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"


def test_no_password_on_a_command_line(compose: dict) -> None:
    for name, service in compose["services"].items():
        argv = " ".join(str(part) for key in ("command", "entrypoint") for part in
                        (service.get(key) if isinstance(service.get(key), list) else [service.get(key) or ""]))
        assert not re.search(r"PASSWORD|SECRET|://[^/\s]*:[^/\s]*@", argv.replace("$${AIRFLOW_ADMIN_PASSWORD}", "")), name
        assert "--password" not in argv, name


def test_production_auth_manager_and_docker_only_through_the_proxy(compose: dict) -> None:
    services = compose["services"]
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-init"):
        assert services[name]["environment"]["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")
    for name in ("airflow-apiserver", "airflow-dag-processor", "airflow-scheduler"):
        assert not any("docker.sock" in v for v in services[name].get("volumes", [])), name
    # DockerOperator runs in the scheduler and reaches the daemon through the socket proxy only
    assert services["airflow-scheduler"]["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"
    assert "apache-airflow-providers-fab" in (DOCKER / "airflow.Dockerfile").read_text()


def test_pickle_deserialisation_is_off_for_every_mlflow_user(compose: dict) -> None:
    for name in ("mlflow", "airflow-scheduler", "airflow-apiserver", "hemo-train"):
        assert compose["services"][name]["environment"]["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false", name


def test_torch_loads_weights_only_in_every_container_and_image(compose: dict) -> None:
    for name, service in compose["services"].items():
        assert service["environment"]["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1", name
    for dockerfile in DOCKERFILES:
        env = " ".join(args for ins, args in _instructions(dockerfile) if ins == "ENV")
        assert re.search(r"\bTORCH_FORCE_WEIGHTS_ONLY_LOAD=1\b", env), dockerfile.name
