"""Attacks on the production stack (docker/compose.yaml), one account per role.

* A task that runs in the scheduler is root on the host when the scheduler mounts the Docker
  socket: only a socket proxy mounts it, limited to the API sections DockerOperator uses, on an
  internal network.
* Every client used the MLflow admin, MinIO's root keys, PostgreSQL's superuser: the root/admin
  credentials now reach only the server that owns them and its init service; each service has its
  own database user and its own S3 keys, limited to its bucket.
* No Fernet key: each Airflow container made its own. One generated key, the same for all.
* Step containers got no MLflow credentials (401), and giving them as environment would show them
  in `docker inspect` and task logs: they mount a private file and get only its path.
* `make secrets` writes fresh random secrets, 0600, and never overwrites the stack's.
* And for real: a basic-auth MLflow server set up by the stack's own init code (docker/mlflow_init.py)
  lets the pipeline's writer move @champion and answers the reader 403.

`docker compose config` needs an engine, which this machine lacks: the YAML is parsed instead.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hemo_pipeline.orchestration.runners import StepSettings, docker_operator, kubernetes_operator

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
AIRFLOW_SERVICES = ("airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor")
ROOT_CREDENTIALS = {
    # variable of docker/.env -> the only services that may see it
    "POSTGRES_SUPERUSER_PASSWORD": {"postgres"},
    "MINIO_ROOT_USER": {"minio", "minio-init"},
    "MINIO_ROOT_PASSWORD": {"minio", "minio-init"},
    "MLFLOW_ADMIN_USERNAME": {"mlflow", "mlflow-init"},
    "MLFLOW_ADMIN_PASSWORD": {"mlflow", "mlflow-init"},
    "AIRFLOW_ADMIN_PASSWORD": {"airflow-init"},
}
SERVICE_CREDENTIALS = {
    "AIRFLOW_DB_PASSWORD": {"postgres", *AIRFLOW_SERVICES},
    "MLFLOW_DB_PASSWORD": {"postgres", "mlflow"},
    "MINIO_MLFLOW_SECRET_KEY": {"minio-init", "mlflow"},
    "MINIO_DVC_SECRET_KEY": {"minio-init", "secrets-init"},
    "MLFLOW_WRITER_PASSWORD": {"mlflow-init", "secrets-init"},
    "MLFLOW_READER_PASSWORD": {"mlflow-init"},
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _variables(value: object) -> set[str]:
    """The docker/.env variables a (merged) service definition reads: ${NAME...}, not $${...}."""
    return set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)", json.dumps(value)))


# --- the Docker socket ---------------------------------------------------------------------------


def test_only_the_socket_proxy_mounts_the_docker_socket(compose: dict) -> None:
    mounting = {name for name, service in compose["services"].items()
                if any("docker.sock" in str(v) for v in service.get("volumes", []))}
    assert mounting == {"docker-proxy"}
    assert compose["services"]["docker-proxy"]["volumes"] == ["/var/run/docker.sock:/var/run/docker.sock:ro"]


def test_the_proxy_allows_what_docker_operator_needs_and_nothing_dangerous(compose: dict) -> None:
    proxy = compose["services"]["docker-proxy"]
    env = proxy["environment"]
    assert {k for k in ("CONTAINERS", "IMAGES", "POST") if env.get(k) == "1"} == {"CONTAINERS", "IMAGES", "POST"}
    for section in ("EXEC", "VOLUMES", "NETWORKS", "SWARM", "SYSTEM", "INFO", "BUILD", "COMMIT", "SECRETS", "AUTH",
                    "SERVICES", "TASKS", "NODES", "PLUGINS", "CONFIGS", "SESSION", "DISTRIBUTION", "GRPC", "EVENTS"):
        assert env.get(section) == "0", f"{section} must be off"
    assert "ports" not in proxy, "the Docker API must not be published"
    assert proxy["networks"] == ["docker-api"] and compose["networks"]["docker-api"]["internal"] is True
    reaching = {name for name, s in compose["services"].items() if "docker-api" in (s.get("networks") or [])}
    assert reaching == {"docker-proxy", "airflow-scheduler"}
    assert compose["services"]["airflow-scheduler"]["environment"]["DOCKER_HOST"] == "tcp://docker-proxy:2375"


# --- one account per role ------------------------------------------------------------------------


def test_root_and_admin_credentials_reach_only_their_server_and_its_init(compose: dict) -> None:
    for variable, allowed in {**ROOT_CREDENTIALS, **SERVICE_CREDENTIALS}.items():
        seeing = {name for name, service in compose["services"].items() if variable in _variables(service)}
        assert seeing == allowed, f"{variable} reaches {sorted(seeing - allowed)}" if seeing - allowed else variable


def test_each_service_has_its_own_database_user(compose: dict) -> None:
    services = compose["services"]
    for name in AIRFLOW_SERVICES:
        conn = services[name]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
        assert conn.startswith("postgresql+psycopg2://${AIRFLOW_DB_USER:?") and "${AIRFLOW_DB_PASSWORD:?" in conn
        assert conn.endswith("@postgres:5432/airflow")
    backend = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    assert backend.startswith("postgresql://${MLFLOW_DB_USER:?") and backend.endswith("@postgres:5432/mlflow")
    assert services["postgres"]["environment"]["POSTGRES_USER"].startswith("${POSTGRES_SUPERUSER:?")
    init = (DOCKER / "postgres-init.sh").read_text()
    roles = re.findall(r"CREATE ROLE :\"(\w+)\" LOGIN ([A-Z ]+) PASSWORD :'(\w+)'", init)
    assert [(user, password) for user, _, password in roles] == [("airflow_user", "airflow_password"),
                                                                 ("mlflow_user", "mlflow_password")]
    assert all("NOSUPERUSER" in flags and "NOCREATEROLE" in flags and "NOCREATEDB" in flags for _, flags, _ in roles)
    for database, owner in (("airflow", "airflow_user"), ("mlflow", "mlflow_user")):
        assert f'CREATE DATABASE {database} OWNER :"{owner}";' in init
        assert f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;" in init  # the other service cannot connect
    # the passwords come from the environment through \getenv, never spliced into SQL or psql's argv
    assert "\\getenv airflow_password AIRFLOW_DB_PASSWORD" in init and "\\getenv mlflow_password MLFLOW_DB_PASSWORD" in init
    assert not re.search(r"PASSWORD '|\$\{?[A-Z_]*PASSWORD", init.split("<<'SQL'", 1)[1])


def test_each_service_has_its_own_s3_keys_limited_to_its_bucket(compose: dict) -> None:
    env = compose["services"]["mlflow"]["environment"]
    assert env["AWS_ACCESS_KEY_ID"].startswith("${MINIO_MLFLOW_ACCESS_KEY:?")
    assert env["AWS_SECRET_ACCESS_KEY"].startswith("${MINIO_MLFLOW_SECRET_KEY:?")
    for name, service in compose["services"].items():  # nobody else holds S3 keys as environment
        if name != "mlflow":
            assert "AWS_SECRET_ACCESS_KEY" not in (service.get("environment") or {}), name
    script = (DOCKER / "minio-init.sh").read_text()
    assert 'account hemo-mlflow "$MINIO_MLFLOW_ACCESS_KEY"' in script and 'account hemo-dvc "$MINIO_DVC_ACCESS_KEY"' in script
    assert re.search(r"printf '%s\\n' \"\$3\" \| mc admin user add hemo \"\$2\"", script)  # secret on stdin
    for bucket in ("hemo-mlflow", "hemo-dvc"):
        policy = json.loads((DOCKER / "minio-policies" / f"{bucket}.json").read_text())
        resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
        assert resources == {f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"}, bucket
        actions = {a for statement in policy["Statement"] for a in statement["Action"]}
        assert all(a.startswith("s3:") and "*" not in a and "Policy" not in a for a in actions), actions
        assert all(statement["Effect"] == "Allow" for statement in policy["Statement"])


def test_the_pipeline_signs_in_as_writer_and_never_as_admin(compose: dict) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment") or {}
        assert "MLFLOW_TRACKING_PASSWORD" not in env, f"{name} holds an MLflow password as environment"
    scheduler = compose["services"]["airflow-scheduler"]["environment"]
    assert scheduler["HEMO_STEP_SECRETS"] == "hemo-step-secrets"
    assert scheduler["HEMO_SECRETS_FILE"] == "/run/hemo-secrets/hemo-step.env"
    assert compose["volumes"]["hemo-step-secrets"]["name"] == "hemo-step-secrets"  # the name the operator mounts
    script = (DOCKER / "secrets-init.sh").read_text()
    assert '"$MLFLOW_WRITER_USERNAME" "$MLFLOW_WRITER_PASSWORD"' in script and "chmod 0400" in script


def test_one_fernet_key_for_every_airflow_container(compose: dict) -> None:
    keys = {name: compose["services"][name]["environment"].get("AIRFLOW__CORE__FERNET_KEY") for name in AIRFLOW_SERVICES}
    assert len(set(keys.values())) == 1, keys
    assert keys["airflow-scheduler"].startswith("${AIRFLOW_FERNET_KEY:?")
    others = {name for name, s in compose["services"].items() if "AIRFLOW_FERNET_KEY" in _variables(s)}
    assert others == set(AIRFLOW_SERVICES)


def test_every_variable_compose_requires_is_in_the_env_template(compose: dict) -> None:
    text = (DOCKER / "compose.yaml").read_text()
    required = set(re.findall(r"(?<!\$)\$\{([A-Z0-9_]+):\?", text))
    template = {line.split("=", 1)[0] for line in (DOCKER / ".env.example").read_text().splitlines()
                if re.match(r"[A-Z0-9_]+=", line)}
    assert required <= template, f"not in docker/.env.example: {sorted(required - template)}"


# --- what step containers are given ----------------------------------------------------------------


SENTINELS = {"MLFLOW_TRACKING_USERNAME": "writer-name-SENTINEL", "MLFLOW_TRACKING_PASSWORD": "writer-pw-SENTINEL",
             "AWS_ACCESS_KEY_ID": "aws-id-SENTINEL", "AWS_SECRET_ACCESS_KEY": "aws-secret-SENTINEL"}


@pytest.fixture
def worker_with_secrets(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> StepSettings:
    """A scheduler that itself holds credentials (environment), as an attacker would hope."""
    for key, value in SENTINELS.items():
        monkeypatch.setenv(key, value)
    return StepSettings(project_dir=tmp_path / "project", run_dir=tmp_path / "runs" / "r", mlflow_uri="http://mlflow:5000",
                        dag_run_id="r", parent_run_id="p", image="hemo:1", uid=50000, gid=0, step_secrets="hemo-step-secrets")


@pytest.mark.parametrize("step", ["train", "gate", "score"])
def test_docker_step_containers_carry_no_secret_value(worker_with_secrets: StepSettings, step: str) -> None:
    op = docker_operator(f"{step}_docker", step, worker_with_secrets)
    spec = json.dumps({"environment": op.environment, "command": op.command, "entrypoint": op.entrypoint,
                       "mounts": [dict(m) for m in op.mounts], "private": getattr(op, "_private_environment", {})})
    assert not any(value in spec for value in SENTINELS.values())
    assert not any(re.search(r"PASSWORD|SECRET_ACCESS|TOKEN", key) for key in op.environment)
    assert op.environment["HEMO_SECRETS_FILE"] == "/run/hemo-secrets/hemo-step.env"
    (mount,) = [m for m in op.mounts if m["Target"] == "/run/hemo-secrets"]
    assert mount["Type"] == "volume" and mount["ReadOnly"] is True


@pytest.mark.parametrize("step", ["train", "gate"])
def test_pods_carry_no_secret_value(worker_with_secrets: StepSettings, step: str) -> None:
    worker_with_secrets.step_secrets = "hemo-step"
    op = kubernetes_operator(f"{step}_pod", step, worker_with_secrets)
    raw = op.env_vars
    env = dict(raw) if isinstance(raw, dict) else {e.name: e.value for e in raw}
    spec = json.dumps({"env": env, "cmds": op.cmds, "arguments": op.arguments})
    assert not any(value in spec for value in SENTINELS.values())
    assert [source.secret_ref.name for source in op.env_from] == ["hemo-step"]


def test_the_kubeflow_pipeline_takes_the_login_from_a_secret_and_holds_no_value() -> None:
    text = (REPO / "pipeline.yaml").read_text()
    spec, platform = yaml.safe_load_all(text)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name, config in executors.items():
        secret, *pacs = config["secretAsEnv"]
        assert secret["secretName"] == "hemo-step", name
        assert {m["envVar"] for m in secret["keyToEnv"]} == {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"}
        if name == "exec-report":  # and the PACS login, from the same Secret, each key optional
            (login,) = pacs
            assert login["secretName"] == "hemo-step" and login["optional"] is True
            from hemo_pipeline.services.dicomweb import PASSWORD_ENV, TOKEN_ENV, USERNAME_ENV

            assert {m["envVar"] for m in login["keyToEnv"]} == {TOKEN_ENV, USERNAME_ENV, PASSWORD_ENV}
        else:
            assert pacs == [], name
    assert len(executors) == len(spec["deploymentSpec"]["executors"])
    assert not re.search(r"(PASSWORD|SECRET_ACCESS_KEY)=", text)


# --- make secrets --------------------------------------------------------------------------------


def _make_secrets(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "make_secrets.py"), *args],
                          capture_output=True, text=True, timeout=60)


def _env_values(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if re.match(r"[A-Z0-9_]+=", line))


def test_make_secrets_writes_a_private_file_of_fresh_distinct_values(tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    out = tmp_path / ".env"
    result = _make_secrets("--out", str(out))
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    values = _env_values(out)
    template = _env_values(DOCKER / ".env.example")
    secret_names = [name for name, value in template.items() if not value]
    generated = [values[name] for name in secret_names]
    assert all(generated) and len(set(generated)) == len(generated), "every secret set, no two alike"
    assert all(len(v) >= 32 and re.fullmatch(r"[A-Za-z0-9_=-]+", v) for v in generated)
    assert all(values[name] == value for name, value in template.items() if value)  # names, folders kept
    Fernet(values["AIRFLOW_FERNET_KEY"].encode())  # a valid key: urlsafe base64 of 32 bytes
    assert len(base64.urlsafe_b64decode(values["AIRFLOW_FERNET_KEY"])) == 32
    assert not any(v in result.stdout + result.stderr for v in generated), "a secret was printed"
    again = tmp_path / "again.env"
    assert _make_secrets("--out", str(again)).returncode == 0
    assert not set(generated) & set(_env_values(again).values()), "values repeat across runs"


def test_make_secrets_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    out = tmp_path / ".env"
    assert _make_secrets("--out", str(out)).returncode == 0
    before = out.read_bytes()
    refused = _make_secrets("--out", str(out))
    assert refused.returncode == 2 and refused.stderr.startswith("error: ") and len(refused.stderr.splitlines()) == 1
    assert out.read_bytes() == before
    forced = _make_secrets("--out", str(out), "--force")
    assert forced.returncode == 0 and out.read_bytes() != before
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]  # no temporary file left


def test_make_secrets_is_the_makefile_target() -> None:
    result = subprocess.run(["make", "-n", "secrets"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "scripts/make_secrets.py" in result.stdout
    forced = subprocess.run(["make", "-n", "secrets", "FORCE=1"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "--force" in forced.stdout


# --- for real: a basic-auth MLflow server with the stack's accounts -------------------------------


def _mlflow_init():
    spec = importlib.util.spec_from_file_location("hemo_mlflow_init", DOCKER / "mlflow_init.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_the_init_code_manages_the_pipelines_experiment_and_model() -> None:
    from hemo_pipeline.services.registry import MODEL_NAME
    from hemo_pipeline.services.tracking import DEFAULT_EXPERIMENT

    init = _mlflow_init()
    assert (init.EXPERIMENT, init.MODEL) == (DEFAULT_EXPERIMENT, MODEL_NAME)


@contextlib.contextmanager
def _basic_auth_server(root: Path, admin: tuple[str, str]):
    from tests.conftest import free_port, wait_for_http

    ini = (DOCKER / "mlflow-basic-auth.ini").read_text().replace(
        "sqlite:////var/lib/mlflow/basic_auth.db", f"sqlite:///{root / 'basic_auth.db'}")
    (root / "basic_auth.ini").write_text(ini)
    port = free_port()
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(root / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
           "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1], "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-only-flask-key"}
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    log = (root / "server.log").open("w")
    process = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--app-name", "basic-auth",
                                "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
                                "--artifacts-destination", (root / "artifacts").as_uri(),
                                "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                               stdout=log, stderr=log, cwd=root, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", timeout=180, process=process)
        yield url
    except Exception:
        log.flush()
        print((root / "server.log").read_text()[-3000:])
        raise
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@contextlib.contextmanager
def _signed_in(user: str, password: str):
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"] = user, password
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow
def test_reader_gets_403_moving_an_alias_the_writer_moves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (mlflow[auth])")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.server.auth.client import AuthServiceClient

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    accounts = {"MLFLOW_ADMIN_USERNAME": "admin", "MLFLOW_ADMIN_PASSWORD": "admin-pw-0123456789",
                "MLFLOW_WRITER_USERNAME": "hemo-pipeline", "MLFLOW_WRITER_PASSWORD": "writer-pw-0123456789",
                "MLFLOW_READER_USERNAME": "hemo-reader", "MLFLOW_READER_PASSWORD": "reader-pw-0123456789"}
    writer = (accounts["MLFLOW_WRITER_USERNAME"], accounts["MLFLOW_WRITER_PASSWORD"])
    reader = (accounts["MLFLOW_READER_USERNAME"], accounts["MLFLOW_READER_PASSWORD"])
    init = _mlflow_init()
    with _basic_auth_server(tmp_path, (accounts["MLFLOW_ADMIN_USERNAME"], accounts["MLFLOW_ADMIN_PASSWORD"])) as url:
        with _signed_in("", ""):
            assert init.provision(url, accounts) == {writer[0]: "created", reader[0]: "created"}
            assert init.provision(url, accounts) == {writer[0]: "updated", reader[0]: "updated"}  # converges

        with _signed_in(*writer):  # the pipeline: runs, a version, @champion
            client = MlflowClient(url)
            experiment = client.get_experiment_by_name(init.EXPERIMENT)
            run = client.create_run(experiment.experiment_id)
            client.log_metric(run.info.run_id, "micro_f2", 0.7)
            version = client.create_model_version(init.MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
            client.set_registered_model_alias(init.MODEL, "champion", version.version)
            with pytest.raises(MlflowException, match="403"):  # not an admin
                AuthServiceClient(url).create_user("intruder", "intruder-pw-0123456789")

        with _signed_in(*reader):  # reads and downloads, never writes
            client = MlflowClient(url)
            assert client.get_model_version_by_alias(init.MODEL, "champion").version == version.version
            assert client.get_run(run.info.run_id).data.metrics["micro_f2"] == 0.7
            with pytest.raises(MlflowException, match="403"):
                client.set_registered_model_alias(init.MODEL, "champion", version.version)
            with pytest.raises(MlflowException, match="403"):
                client.delete_registered_model_alias(init.MODEL, "champion")
            with pytest.raises(MlflowException, match="403"):
                client.create_run(experiment.experiment_id)
            with pytest.raises(MlflowException, match="403"):
                client.create_model_version(init.MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)

        with _signed_in("hemo-pipeline", "wrong-password"):
            with pytest.raises(MlflowException, match="401"):
                MlflowClient(url).get_experiment_by_name(init.EXPERIMENT)
        with _signed_in(*writer):
            assert MlflowClient(url).get_model_version_by_alias(init.MODEL, "champion").version == version.version
