"""The production services, started for real on this machine for the container tests.

What docker/compose.yaml runs, made from what the package registries give (no image registry is
reachable here), with the stack's own init code wherever it can run outside its container:

* **PostgreSQL** (Debian's postgresql-15, a throw-away cluster on 127.0.0.1, run as the
  ``postgres`` account): ``docker/postgres-init.sh`` makes the ``airflow`` and ``mlflow`` users,
  each owning its own database, neither a superuser;
* an **S3-protocol store** (the suite's ``moto_server``; MinIO in production) for MLflow's artifacts;
* **MLflow** on PostgreSQL with ``--app-name basic-auth`` and proxied S3 artifacts;
  ``docker/mlflow_init.py`` (as the ``mlflow-init`` service) makes the pipeline's writer and a reader;
* the **step secrets volume**, filled by ``docker/secrets-init.sh`` in a one-shot container as the
  ``secrets-init`` service does (the writer's login, 0400, owned by the step uid);
* **Airflow** api-server, scheduler and dag-processor, LocalExecutor, metadata on PostgreSQL,
  the project's ``dags/`` folder, the ``docker`` runner and the image ``make image`` built.

Where compose differs and why: the step containers join the host's network (``HEMO_DOCKER_NETWORK
=host``; compose's network is ``hemo_default``) so they reach these services on 127.0.0.1, and
the scheduler uses the Docker socket directly (compose puts ``docker-proxy`` in between; its
image cannot be pulled here). The Airflow auth manager is Airflow's SimpleAuthManager with one
generated password (compose installs the FAB provider, which this venv does not have); the REST
API is the same. Every password is fresh and random, passed through the environment or a file,
never through a command line.

Only the standard library, ``tests.conftest`` and the ``docker``/``airflow``/``mlflow`` commands
are used: the tests depend on the `hemo` CLI, the DAG id and its params and the Dockerfile, not
on the project's Python modules.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import S3_CREDENTIALS, free_port, wait_for_http

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
VENV_BIN = Path(sys.executable).parent
IMAGE = os.environ.get("HEMO_TEST_IMAGE", "hemo:0.1.0")
BASE_IMAGE = os.environ.get("HEMO_TEST_BASE_IMAGE", "hemo-base/debian:bookworm")
STEP_UID, STEP_GID = 50000, 0
"""The uid/gid step containers run as: compose's default (HEMO_CONTAINER_UID/GID)."""


# --- can this machine run them? --------------------------------------------------------------------


def _run(args: list[str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kwargs)


def container_skip_reason(image: str = IMAGE) -> str | None:
    """None when a Docker engine answers and ``image`` is built; otherwise one line saying why the
    container tests cannot run on this machine (``make test`` installs and starts what it can)."""
    if not shutil.which("docker"):
        return "no docker client here (make test installs docker.io when run as root with apt)"
    if _run(["docker", "info"], timeout=60).returncode != 0:
        return "no Docker engine answers (make test starts one when run as root: scripts/docker_engine.sh)"
    if _run(["docker", "image", "inspect", image], timeout=60).returncode != 0:
        return f"image {image} is not built here (make image)"
    if os.geteuid() != 0:
        return "the stack tests start PostgreSQL as its own account and hand folders to the step uid: they need root"
    return None


def stack_skip_reason() -> str | None:
    """As :func:`container_skip_reason`, plus PostgreSQL's server programs and the base image."""
    reason = container_skip_reason()
    if reason:
        return reason
    if not pg_bindir():
        return "PostgreSQL's server is not installed (apt-get install postgresql-15)"
    if _run(["docker", "image", "inspect", BASE_IMAGE], timeout=60).returncode != 0:
        return f"base image {BASE_IMAGE} is missing (scripts/debian_base.sh)"
    return None


def pg_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian: /usr/lib/postgresql/<v>/bin)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return found[-1].parent if found else None


def shared_folder(prefix: str) -> Path:
    """A temporary folder other accounts may enter (postgres, the step uid): pytest's own are 0700."""
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def password() -> str:
    return secrets.token_urlsafe(24)


# --- PostgreSQL -------------------------------------------------------------------------------------


@dataclass
class Postgres:
    port: int
    roles: dict[str, str]
    """AIRFLOW_DB_USER/PASSWORD, MLFLOW_DB_USER/PASSWORD, as docker/.env names them."""

    def url(self, service: str, driver: str = "postgresql") -> str:
        user, pw = self.roles[f"{service.upper()}_DB_USER"], self.roles[f"{service.upper()}_DB_PASSWORD"]
        return f"{driver}://{user}:{pw}@127.0.0.1:{self.port}/{service}"


def _as_postgres(args: list[str], env: Mapping[str, str] | None = None, timeout: float = 120) -> None:
    result = _run(["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", *args], timeout=timeout,
                  env={**os.environ, **(env or {})})
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"


@contextlib.contextmanager
def postgres_server(root: Path) -> Iterator[Postgres]:
    """A PostgreSQL cluster on 127.0.0.1 (superuser: local socket only, trust; everyone else:
    TCP with a SCRAM password), set up by the stack's own docker/postgres-init.sh."""
    bindir = pg_bindir()
    assert bindir, "PostgreSQL is not installed"
    data, sockets = root / "pgdata", root / "pgsocket"
    for folder in (data, sockets):
        folder.mkdir()
        shutil.chown(folder, "postgres", "postgres")
    _as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--auth-local=trust",
                  "--auth-host=scram-sha-256"])
    port = free_port()
    log = root / "postgres.log"
    log.touch()
    shutil.chown(log, "postgres", "postgres")
    _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "start",
                  "-o", f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1"])
    roles = {"AIRFLOW_DB_USER": "airflow", "AIRFLOW_DB_PASSWORD": password(),
             "MLFLOW_DB_USER": "mlflow", "MLFLOW_DB_PASSWORD": password()}
    try:
        # the stack's init script, as the postgres image's entrypoint runs it (passwords via \getenv)
        _as_postgres(["bash", str(DOCKER_DIR / "postgres-init.sh")],
                     env={"POSTGRES_USER": "postgres", "PGHOST": str(sockets), "PGPORT": str(port), **roles})
        yield Postgres(port=port, roles=roles)
    finally:
        with contextlib.suppress(Exception):
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"])


# --- long-running processes -------------------------------------------------------------------------


@dataclass
class Process:
    name: str
    popen: subprocess.Popen
    log: Path

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


@contextlib.contextmanager
def processes() -> Iterator[list[Process]]:
    """Start processes into the yielded list; all are stopped (their process groups) at exit."""
    started: list[Process] = []
    try:
        yield started
    finally:
        for process in reversed(started):
            stop(process)


def start(started: list[Process], name: str, argv: list[str], env: Mapping[str, str], log_dir: Path,
          cwd: Path | None = None) -> Process:
    log = log_dir / f"{name}.log"
    handle = log.open("w")
    popen = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd or log_dir,
                             start_new_session=True)
    handle.close()
    process = Process(name, popen, log)
    started.append(process)
    return process


def stop(process: Process, grace: float = 20) -> None:
    import signal

    if process.popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.popen.pid, signal.SIGTERM)
        try:
            process.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait(timeout=30)


def wait_until_answers(process: Process, url: str, timeout: float) -> None:
    try:
        wait_for_http(url, timeout=timeout, process=process.popen)
    except (RuntimeError, TimeoutError) as exc:
        raise AssertionError(f"{process.name}: {exc}\n{process.tail()}") from exc


# --- MLflow: basic auth, PostgreSQL, S3 artifacts ---------------------------------------------------


@dataclass
class Mlflow:
    url: str
    accounts: dict[str, str]
    """MLFLOW_{ADMIN,WRITER,READER}_{USERNAME,PASSWORD}, as docker/.env names them."""

    def login(self, role: str) -> tuple[str, str]:
        return self.accounts[f"MLFLOW_{role.upper()}_USERNAME"], self.accounts[f"MLFLOW_{role.upper()}_PASSWORD"]


def start_mlflow(started: list[Process], root: Path, postgres: Postgres, s3_endpoint: str, bucket: str) -> Mlflow:
    """The tracking server as compose's ``mlflow`` service runs it (backend URI and keys from the
    environment, never argv), then ``docker/mlflow_init.py`` as ``mlflow-init`` runs it."""
    accounts = {"MLFLOW_ADMIN_USERNAME": "admin", "MLFLOW_ADMIN_PASSWORD": password(),
                "MLFLOW_WRITER_USERNAME": "hemo-pipeline", "MLFLOW_WRITER_PASSWORD": password(),
                "MLFLOW_READER_USERNAME": "hemo-reader", "MLFLOW_READER_PASSWORD": password()}
    home = root / "mlflow"
    home.mkdir()
    ini = (DOCKER_DIR / "mlflow-basic-auth.ini").read_text().replace(
        "sqlite:////var/lib/mlflow/basic_auth.db", f"sqlite:///{home / 'basic_auth.db'}")
    (home / "basic_auth.ini").write_text(ini)
    port = free_port()
    env = {**_clean_env(), "MLFLOW_BACKEND_STORE_URI": postgres.url("mlflow"),
           "MLFLOW_AUTH_CONFIG_PATH": str(home / "basic_auth.ini"),
           "MLFLOW_AUTH_ADMIN_USERNAME": accounts["MLFLOW_ADMIN_USERNAME"],
           "MLFLOW_AUTH_ADMIN_PASSWORD": accounts["MLFLOW_ADMIN_PASSWORD"],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": password(), "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
           "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1", "MLFLOW_S3_ENDPOINT_URL": s3_endpoint, **S3_CREDENTIALS}
    server = start(started, "mlflow", [str(VENV_BIN / "mlflow"), "server", "--app-name", "basic-auth",
                                       "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                                       "--artifacts-destination", f"s3://{bucket}/artifacts"], env, home)
    url = f"http://127.0.0.1:{port}"
    wait_until_answers(server, f"{url}/health", timeout=240)
    init = _run([sys.executable, str(DOCKER_DIR / "mlflow_init.py")], timeout=240,
                env={**_clean_env(), "MLFLOW_TRACKING_URI": url, **accounts})
    assert init.returncode == 0, f"mlflow_init.py: {init.stdout[-2000:]} {init.stderr[-2000:]}"
    return Mlflow(url=url, accounts=accounts)


def _clean_env() -> dict[str, str]:
    """This process's environment without MLflow/AWS settings a test run may carry."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "AWS_", "AIRFLOW", "HEMO_")) and k != "PYTEST_CURRENT_TEST"}


# --- the step secrets volume (secrets-init) ---------------------------------------------------------


@contextlib.contextmanager
def step_secrets_volume(writer: tuple[str, str], uid: int = STEP_UID, gid: int = STEP_GID) -> Iterator[str]:
    """Named volumes filled by docker/secrets-init.sh in a one-shot container, as compose's
    ``secrets-init`` does; yields the step volume's name (HEMO_STEP_SECRETS). The values reach the
    container as environment taken from this process (``-e NAME``), never as arguments."""
    suffix = secrets.token_hex(4)
    step, airflow = f"hemo-step-secrets-test-{suffix}", f"hemo-airflow-secrets-test-{suffix}"
    values = {"MLFLOW_WRITER_USERNAME": writer[0], "MLFLOW_WRITER_PASSWORD": writer[1],
              "MINIO_DVC_ACCESS_KEY": S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
              "MINIO_DVC_SECRET_KEY": S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
              "HEMO_CONTAINER_UID": str(uid), "HEMO_CONTAINER_GID": str(gid)}
    try:
        argv = ["docker", "run", "--rm", "--user", "0:0", "--network", "none",
                *[arg for name in values for arg in ("-e", name)],
                "-v", f"{step}:/secrets/step", "-v", f"{airflow}:/secrets/airflow",
                "-v", f"{DOCKER_DIR / 'secrets-init.sh'}:/opt/hemo-init/secrets-init.sh:ro",
                "--entrypoint", "/bin/sh", BASE_IMAGE, "/opt/hemo-init/secrets-init.sh"]
        result = _run(argv, env={**os.environ, **values})
        assert result.returncode == 0, result.stderr[-2000:]
        yield step
    finally:
        _run(["docker", "volume", "rm", "-f", step, airflow])


# --- Airflow: api-server, scheduler, dag-processor on PostgreSQL ------------------------------------


@dataclass
class Airflow:
    url: str
    username: str
    password: str
    env: dict[str, str]
    processes: list[Process] = field(default_factory=list)
    _token: str | None = None

    def token(self) -> str:
        """A JWT from the API server's /auth/token, as a script or the UI gets one."""
        if self._token is None:
            answer = self._http("POST", "/auth/token", {"username": self.username, "password": self.password},
                                auth=False)
            self._token = answer["access_token"]
        return self._token

    def _http(self, method: str, path: str, body: Any = None, auth: bool = True) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                         headers={"Content-Type": "application/json", "Accept": "application/json"})
        if auth:
            request.add_header("Authorization", f"Bearer {self.token()}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: HTTP {exc.code} {exc.read().decode()[:1000]}") from exc
        if not text:
            return None
        return json.loads(text) if text.lstrip().startswith(("{", "[")) else text

    def api(self, method: str, path: str, body: Any = None) -> Any:
        return self._http(method, f"/api/v2{path}", body)

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self.api("POST", f"/dags/{dag_id}/dagRuns", {"logical_date": None, "conf": conf})
        return run["dag_run_id"]

    def wait_for_dag(self, dag_id: str, timeout: float = 300) -> None:
        """Until the dag-processor has parsed the DAG into the metadata database."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api("GET", f"/dags/{dag_id}")
                return
            except AssertionError:
                time.sleep(2)
        errors = self.api("GET", "/importErrors")
        raise AssertionError(f"{dag_id} was not parsed within {timeout:.0f} s: {errors}\n"
                             + "\n".join(p.tail(2000) for p in self.processes))

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{_quote(run_id)}")["state"]

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        state = "queued"
        while time.monotonic() < deadline:
            state = self.run_state(dag_id, run_id)
            if state in ("success", "failed"):
                return state
            time.sleep(3)
        return state

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.api("GET", f"/dags/{dag_id}/dagRuns/{_quote(run_id)}/taskInstances?limit=100")["task_instances"]

    def xcom(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> Any:
        entry = self.api("GET", f"/dags/{dag_id}/dagRuns/{_quote(run_id)}/taskInstances/{task_id}/xcomEntries/"
                                f"return_value?map_index={map_index}&deserialize=true")
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) and value[:1] in "{[" else value

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        answer = self._http("GET", f"/api/v2/dags/{dag_id}/dagRuns/{_quote(run_id)}/taskInstances/{task_id}/logs/"
                                   f"{try_number}?full_content=true")
        if isinstance(answer, dict):
            content = answer.get("content", answer)
            if isinstance(content, list):
                return "\n".join(str(part.get("event", part)) if isinstance(part, dict) else str(part)
                                 for part in content)
            return str(content)
        return str(answer)


def _quote(value: str) -> str:
    import urllib.parse

    return urllib.parse.quote(value, safe="")


@contextlib.contextmanager
def airflow_services(root: Path, postgres: Postgres, extra_env: Mapping[str, str]) -> Iterator[Airflow]:
    """`airflow db migrate`, then api-server, scheduler and dag-processor (LocalExecutor) with
    their metadata in PostgreSQL and the project's dags/ folder. ``extra_env`` carries the DAG's
    configuration (HEMO_*, MLFLOW_TRACKING_URI, AIRFLOW_VAR_*)."""
    home = root / "airflow"
    home.mkdir()
    port = free_port()
    admin, admin_password = "hemo-admin", password()
    (home / "passwords.json").write_text(json.dumps({admin: admin_password}))
    (home / "passwords.json").chmod(0o600)
    env = {
        **_clean_env(),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url("airflow", "postgresql+psycopg2"),
        "AIRFLOW__CORE__FERNET_KEY": _fernet_key(),
        "AIRFLOW__API_AUTH__JWT_SECRET": password(),
        "AIRFLOW__API__SECRET_KEY": password(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{admin}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
        # Only runs that someone triggers: unpaused with catchup=False, the weekly timetable would
        # at once start the run of last Monday 03:00 (CronTriggerTimetable aligns to the previous tick).
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__SCHEDULER__TASK_QUEUED_TIMEOUT": "1800",
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",
        **extra_env,
    }
    airflow = str(VENV_BIN / "airflow")
    started_at = time.perf_counter()
    migrate = _run([airflow, "db", "migrate"], timeout=900, env=env)
    assert migrate.returncode == 0, migrate.stderr[-3000:]
    print(f"airflow db migrate (PostgreSQL): {time.perf_counter() - started_at:.1f} s")
    with processes() as started:
        api = start(started, "airflow-api-server", [airflow, "api-server", "--host", "127.0.0.1", "--port", str(port),
                                                    "--workers", "1"], env, home)
        start(started, "airflow-scheduler", [airflow, "scheduler"], env, home)
        start(started, "airflow-dag-processor", [airflow, "dag-processor"], env, home)
        wait_until_answers(api, f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=300)
        yield Airflow(url=f"http://127.0.0.1:{port}", username=admin, password=admin_password, env=env,
                      processes=started)


def _fernet_key() -> str:
    import base64

    return base64.urlsafe_b64encode(os.urandom(32)).decode()


# --- containers -------------------------------------------------------------------------------------


def containers(*filters: str, all_states: bool = True) -> list[dict[str, Any]]:
    """`docker inspect` of the containers `docker ps` lists with these filters."""
    argv = ["docker", "ps", "-q", "--no-trunc", *(["-a"] if all_states else [])]
    for item in filters:
        argv += ["--filter", item]
    ids = _run(argv).stdout.split()
    if not ids:
        return []
    return json.loads(_run(["docker", "inspect", *ids]).stdout)


def command_of(container: dict[str, Any]) -> list[str]:
    return [*(container["Config"].get("Entrypoint") or []), *(container["Config"].get("Cmd") or [])]
