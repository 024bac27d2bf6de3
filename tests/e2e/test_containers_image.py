"""The training/serving image, built for real by `make image` (scripts/build_image.sh) from the
Dockerfile users build, only the base differing (a debootstrapped Debian here, NVIDIA's CUDA image
in production):

* a second build with nothing changed is Docker's cache throughout: the same image, in seconds;
* it runs `hemo` as a non-root user with the pinned set (torch, torchvision, MLflow, Airflow as
  requirements.lock has them), models-are-data settings on;
* the source went in through .dockerignore: no git history, environments, data, outputs or
  secrets files in the image.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e import stack_services as svc

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image() -> dict:
    reason = svc.container_skip_reason()
    if reason:
        pytest.skip(reason)
    (inspect,) = json.loads(subprocess.run(["docker", "image", "inspect", svc.IMAGE], capture_output=True, text=True,
                                           timeout=60, check=True).stdout)
    return inspect


def _in_image(*argv: str, entrypoint: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    args = ["docker", "run", "--rm", "--network", "none", *(["--entrypoint", entrypoint] if entrypoint else []),
            svc.IMAGE, *argv]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


def _build(commit: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.perf_counter()
    result = subprocess.run([str(REPO / "scripts" / "build_image.sh")], cwd=REPO, capture_output=True, text=True,
                            timeout=1800, env={**os.environ, "PYTHON": sys.executable, "HEMO_IMAGE": svc.IMAGE,
                                               "HEMO_GIT_COMMIT": commit})
    return result, time.perf_counter() - started


def _tree_state() -> str:
    """What `COPY . .` sees change: tracked edits and untracked files (others may edit a shared checkout)."""
    status = subprocess.run(["git", "status", "--porcelain", "-uall"], cwd=REPO, capture_output=True, text=True).stdout
    diff = subprocess.run(["git", "diff", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout
    return status + diff


def _cached_steps(log: str) -> dict[str, bool]:
    """Each `Step i/n : INSTRUCTION` of a legacy-builder log -> whether it came from the cache."""
    blocks = re.split(r"^Step \d+/\d+ : ", log, flags=re.M)[1:]
    return {block.splitlines()[0]: "Using cache" in block.split("\n ---> ", 2)[1][:40] if "\n ---> " in block else False
            for block in blocks}


@pytest.mark.timeout(2400)  # the first build rebuilds whatever changed since `make image`
def test_a_build_with_nothing_changed_is_the_cache_throughout(image: dict) -> None:
    # one commit for both builds: the image records it (HEMO_GIT_COMMIT), so a commit in between is a change
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    first, _ = _build(commit)  # brings the image up to this tree, whatever the suite did before
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    tree = _tree_state()
    again, seconds = _build(commit)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = [line for line in again.stdout.splitlines() if line.startswith("image:")]
    print(f"cached build: {seconds:.1f} s", *summary, sep="\n")
    steps = _cached_steps(again.stdout)
    # the expensive layer (the pinned set, ~7 GB) is reused whatever else changed
    (dependencies,) = [cached for step, cached in steps.items() if step.startswith("RUN python -c \"import tomllib")]
    assert dependencies, again.stdout[-3000:]
    if _tree_state() == tree:  # nothing changed in between (CI): every layer from the cache, the same image
        layers = {step: cached for step, cached in steps.items() if not step.startswith(("FROM", "ARG"))}
        assert all(layers.values()), [step for step, cached in layers.items() if not cached]
        built = [log.split("Successfully built ")[-1].split()[0] for log in (first.stdout, again.stdout)]
        assert built[0] == built[1], "a build with nothing changed made another image"
        assert seconds < 120, f"a fully cached build took {seconds:.0f} s"
    else:
        print("the checkout changed between the two builds (another writer): only the dependency layer is checked")


def test_the_image_runs_hemo_as_non_root_with_the_pinned_set(image: dict) -> None:
    config = image["Config"]
    assert config["User"] == "hemo" and config["Entrypoint"] == ["hemo"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1" and env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    assert config["Labels"]["org.opencontainers.image.base.name"] == svc.BASE_IMAGE  # only the base differs
    helped = _in_image("--help")
    assert helped.returncode == 0 and "usage: hemo" in helped.stdout
    probe = ("import importlib.metadata as m, json, os; print(json.dumps({'uid': os.getuid(), 'versions': "
             "{p: m.version(p) for p in ('torch', 'torchvision', 'mlflow', 'apache-airflow', 'dvc', 'safetensors')}}))")
    result = _in_image("-c", probe, entrypoint="python")
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["uid"] != 0
    lock = dict(line.split("==", 1) for line in (REPO / "requirements.lock").read_text().splitlines() if "==" in line)
    pins = {name.lower(): version for name, version in lock.items()}
    for package, version in found["versions"].items():
        assert version.split("+")[0] == pins[package.lower()], package


def test_the_source_goes_in_through_dockerignore_without_secrets_or_data(image: dict) -> None:
    listing = _in_image("-c", "cd /opt/hemo-src && find . -maxdepth 2 | sort", entrypoint="sh")
    assert listing.returncode == 0, listing.stderr
    names = set(listing.stdout.split())
    assert {"./pyproject.toml", "./requirements.lock", "./dags", "./docker"} <= names
    for absent in ("./.git", "./.venv", "./data", "./outputs", "./reports", "./mlflow.db", "./docker/.env",
                   "./.hemo-dicom-salt", "./.venv-kfp"):
        assert absent not in names, f"{absent} is in the image"


def test_where_containers_cannot_run_the_tests_say_why_in_one_line(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    missing = svc.container_skip_reason("hemo:never-built-here")
    if svc.container_skip_reason() is None:  # an engine answers: only the image is missing
        assert missing == "image hemo:never-built-here is not built here (make image)"
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker client at all
    reason = svc.container_skip_reason()
    assert reason and "\n" not in reason and reason.startswith("no docker client here")
