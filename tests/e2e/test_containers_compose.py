"""docker/compose.yaml checked by Docker Compose itself (`docker compose config`, v2: Debian's own
package, fetched by scripts/compose_v2.sh where bookworm's 1.29 is all apt has), not only read as
YAML:

* with a docker/.env that `make secrets` writes, the file is valid and every secret is filled in;
* without one, Compose refuses and names the variable to set (no service starts on an empty password);
* the training image compose runs (hemo-train, and the DAG's AIRFLOW_VAR_HEMO_IMAGE) is the one
  `make image` built and tests/e2e runs; every other image is pulled from a registry in production,
  exactly those the README lists (none can be pulled on this machine, which reaches no registry).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e import stack_services as svc

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
PULLED_IN_PRODUCTION = {
    # service images
    "postgres:16", "minio/minio:RELEASE.2025-09-07T16-13-09Z", "minio/mc:RELEASE.2025-08-13T08-35-41Z",
    "busybox:1.36.1", "tecnativa/docker-socket-proxy:v0.3.0",
    # the bases of the images compose builds (docker/airflow.Dockerfile, docker/mlflow.Dockerfile)
    "apache/airflow:3.3.2-python3.11", "python:3.11-slim",
}
"""README, "Orchestration": the images a `docker compose up` pulls (kept equal to what the files name)."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def compose() -> str:
    result = subprocess.run([str(REPO / "scripts" / "compose_v2.sh")], capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        pytest.skip(f"no Docker Compose v2 here: {result.stderr.strip().splitlines()[-1] if result.stderr else ''}")
    return result.stdout.strip()


@pytest.fixture(scope="module")
def env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("compose") / ".env"
    made = subprocess.run([sys.executable, str(REPO / "scripts" / "make_secrets.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    return out


def _config(compose: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([compose, "-f", str(COMPOSE_FILE), *args, "config", "--format", "json"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_compose_accepts_the_stack_with_the_secrets_make_secrets_writes(compose: str, env_file: Path) -> None:
    result = _config(compose, "--env-file", str(env_file), "--profile", "manual")
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads(result.stdout)
    assert config["name"] == "hemo"
    services = config["services"]
    values = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line and line[0] != "#")
    mlflow_env = services["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_AUTH_ADMIN_PASSWORD"] == values["MLFLOW_ADMIN_PASSWORD"]  # interpolated, not empty
    assert services["hemo-train"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.get("host_ip") == "127.0.0.1", f"{name} publishes on every interface"


def test_compose_refuses_to_start_without_the_secrets(compose: str, tmp_path: Path) -> None:
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = _config(compose, "--env-file", str(empty))
    assert result.returncode != 0
    assert "in docker/.env" in result.stderr and "make secrets" in result.stderr


def test_the_training_image_is_the_one_built_here_and_the_rest_are_pulled(compose: str, env_file: Path) -> None:
    config = json.loads(_config(compose, "--env-file", str(env_file), "--profile", "manual").stdout)
    services = config["services"]
    built = {name: s["image"] for name, s in services.items() if "build" in s}
    assert built["hemo-train"] == svc.IMAGE
    assert services["hemo-train"]["build"]["dockerfile"].endswith("docker/Dockerfile")
    assert services["airflow-scheduler"]["environment"]["AIRFLOW_VAR_HEMO_IMAGE"] == svc.IMAGE
    pulled = {s["image"] for s in services.values() if "build" not in s}
    bases = set()
    dockerfiles = {Path(s["build"]["context"]) / s["build"]["dockerfile"] for s in services.values() if "build" in s}
    for dockerfile in dockerfiles:
        if dockerfile.name != "Dockerfile":  # the training image's base is a build argument (make image)
            bases |= {line.split()[1] for line in dockerfile.read_text().splitlines() if line.startswith("FROM ")}
    assert pulled | bases == PULLED_IN_PRODUCTION
    readme = (REPO / "README.md").read_text()
    assert not {image for image in PULLED_IN_PRODUCTION if f"`{image}`" not in readme}, "README lists what is pulled"
    if svc.container_skip_reason() is None:  # and that image is really here, on the base made here
        inspect = subprocess.run(["docker", "image", "inspect", svc.IMAGE, "--format",
                                  '{{index .Config.Labels "org.opencontainers.image.base.name"}}'],
                                 capture_output=True, text=True, timeout=60)
        assert inspect.stdout.strip() == svc.BASE_IMAGE


def test_every_required_variable_tells_how_to_make_it() -> None:
    """Compose reports whichever missing variable it meets first (not always the same one), so each
    `${VAR:?message}` must carry the whole instruction, not just the first few."""
    messages = re.findall(r"\$\{(\w+):\?([^}]*)\}", COMPOSE_FILE.read_text())
    assert len(messages) > 20
    lacking = sorted({name for name, message in messages if f"set {name} in docker/.env (make secrets)" != message})
    assert not lacking, lacking
