"""Shared, session-scoped fixtures: a tiny synthetic data set (and, later, servers).

Everything is generated into pytest's temp folders; tests that change data work on a copy.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two xdist workers on two cores: one thread each, and the same for every
    # step they start (subprocesses inherit it), or torch oversubscribes the cores badly.
    os.environ["OMP_NUM_THREADS"] = os.environ.get("HEMO_TEST_THREADS", "1")

from hemo_model.data.synth import generate_dataset

TINY = {"train_patients": 4, "test_patients": 2, "image_size": 64, "seed": 7}
# What a whole run writes under the temporary folder at its peak (checkpoints, MLflow and DVC
# stores, DAG and Kubeflow runs), with pytest removing each passed test's folder as it ends.
SUITE_PEAK_GIB = 10.0


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to start on a disk the suite would fill: a full disk fails tests far from the cause
    (a CI run lost four end-to-end tests to "No space left on device" and "database or disk is
    full"), one line here names the folder and what to do."""
    if os.environ.get("PYTEST_XDIST_WORKER") or session.config.option.collectonly:
        return
    need = float(os.environ.get("HEMO_TEST_MIN_FREE_GIB", SUITE_PEAK_GIB))
    # where pytest will write: --basetemp, else PYTEST_DEBUG_TEMPROOT, else TMPDIR/the system default
    tmp = Path(session.config.option.basetemp or os.environ.get("PYTEST_DEBUG_TEMPROOT") or tempfile.gettempdir())
    while not tmp.exists() and tmp != tmp.parent:
        tmp = tmp.parent
    free = shutil.disk_usage(tmp).free / 2**30
    if free < need:
        pytest.exit(
            f"only {free:.1f} GiB free under {tmp}; the whole suite writes up to {need:.0f} GiB there: "
            "free some space, or point TMPDIR at a larger disk (HEMO_TEST_MIN_FREE_GIB lowers the check "
            "for a partial run)",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )
_SESSION_EXPERIMENT_ID = os.environ.get("MLFLOW_EXPERIMENT_ID")


# The files that take longest (minutes: trainings, a containerised DAG run, kfp.local) start
# first. `make test` hands whole files to two workers in collection order (--no-loadscope-reorder;
# xdist's default, most tests first, started the 4-test, 15-minute learning file near the end and
# left one worker running alone). Longest first, the other worker fills in beside it.
LONGEST_FIRST = (
    "tests/e2e/test_learning.py",
    "tests/e2e/test_stack_dag_docker.py",
    "tests/pipelines/test_kubeflow.py",
    "tests/e2e/test_faults.py",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))  # stable: files keep their order


@pytest.fixture(autouse=True)
def _no_mlflow_experiment_carried_over():
    """Steps run in-process select their MLflow experiment for the whole process (a module global
    and MLFLOW_EXPERIMENT_ID). Undo that after each test: a later test against another tracking
    store would otherwise start its runs in an experiment id that does not exist there (seen as
    test_security failing after test_promotion)."""
    yield
    fluent = sys.modules.get("mlflow.tracking.fluent")
    if fluent is not None:
        fluent._active_experiment_id = None
    if _SESSION_EXPERIMENT_ID is None:
        os.environ.pop("MLFLOW_EXPERIMENT_ID", None)
    else:
        os.environ["MLFLOW_EXPERIMENT_ID"] = _SESSION_EXPERIMENT_ID


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid DLCV data set (4 train / 2 test patients, 64 px). Treat as read-only."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate_dataset(root, **TINY)
    return root


@pytest.fixture
def data_copy(tiny_data: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny data set that a test may corrupt."""
    target = tmp_path / "data"
    shutil.copytree(tiny_data, target)
    return target


def step_env(**extra: str) -> dict[str, str]:
    """The environment of a `hemo`, `dvc` or `torchrun` subprocess a test starts: this venv's bin
    first on PATH, one thread, unbuffered output (tests wait for its lines), and no MLflow URI or
    parent run carried over from the test process (each test points its steps at its own store)."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "HEMO_PARENT_RUN_ID")}
    return {**env, "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}", "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1", **extra}


def run_ok(args: list[str], cwd: Path, timeout: float = 900, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run ``args`` in ``cwd`` with :func:`step_env`; fail the test with the output's tail unless it exits 0."""
    import subprocess

    result = subprocess.run(args, cwd=cwd, env=step_env(**extra_env), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """The lines ``process`` prints up to and including the first one that contains ``marker``.

    A plain ``for line in process.stdout`` blocks for ever when the step hangs before it prints
    the marker (a rendezvous that never completes, a server that never answers): CI would stop at
    its own limit with no word of which test hung. Here a thread reads, and after ``timeout``
    seconds the process (its whole group when it leads one) is killed and the test fails with the
    output so far. The reader stops at the marker, so ``communicate()`` can take the rest."""
    import signal
    import subprocess  # noqa: F401 (the annotation)
    import threading

    assert process.stdout is not None
    lines: list[str] = []
    found = threading.Event()

    def pump() -> None:
        for line in process.stdout:
            lines.append(line)
            if marker in line:
                found.set()
                return

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found.is_set():
        why = f"printed no {marker!r} within {timeout:.0f} s" if reader.is_alive() else f"ended without printing {marker!r}"
        try:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGKILL)
            else:
                process.kill()
        except ProcessLookupError:
            pass
        process.wait(timeout=30)
        reader.join(10)
        pytest.fail(f"{' '.join(map(str, process.args))[:300]} {why}:\n" + "".join(lines)[-4000:])
    return lines


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, timeout: float = 60.0, process=None) -> None:
    """Poll ``url`` until it answers (any HTTP status) or fail with the server's output."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited early with code {process.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "hemo-test-key",
    "AWS_SECRET_ACCESS_KEY": "hemo-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory):
    """A real S3-protocol server (moto_server) on 127.0.0.1; yields its endpoint URL."""
    import os
    import subprocess
    import sys

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    moto = Path(sys.executable).with_name("moto_server")
    process = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log,
                               env={**os.environ, **S3_CREDENTIALS})
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(endpoint, process=process)
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture
def s3_bucket(s3_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket on the test S3 server, with credentials exported to the environment."""
    import uuid

    import boto3

    for key, value in S3_CREDENTIALS.items():
        monkeypatch.setenv(key, value)
    name = f"hemo-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name


def version_data_on_s3(repo: Path, endpoint: str, bucket: str, **extra_env: str) -> None:
    """Set ``repo`` up as a user does: git + DVC, ``data/`` tracked by DVC, an S3 remote named
    ``storage`` (URL and endpoint in .dvc/config, credentials only in the environment:
    ``extra_env`` or the test's own) as the default, and the data pushed there."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    for args in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "config", "core.analytics", "false"],
                 [dvc, "add", "-q", "data"], [dvc, "remote", "add", "-d", "storage", f"s3://{bucket}/hemo"],
                 [dvc, "remote", "modify", "storage", "endpointurl", endpoint], [dvc, "push", "-q"]):
        run_ok(args, repo, timeout=300, **extra_env)


@contextlib.contextmanager
def running_mlflow_server(root: Path, artifacts_destination: str | None = None, env: dict | None = None):
    """Start a real MLflow tracking server + registry (SQLite backend, proxied artifacts)."""
    import os
    import subprocess
    import sys

    port = free_port()
    log = (root / "server.log").open("w")
    mlflow = Path(sys.executable).with_name("mlflow")
    process = subprocess.Popen(
        [str(mlflow), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", artifacts_destination or (root / "artifacts").as_uri(),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=log, cwd=root, env={**os.environ, **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", timeout=120, process=process)
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


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real MLflow tracking server shared by a session's tests."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


# A 1-epoch model on 2 gate patients can neither beat the all-positive model nor pass a minimum
# gate, so the tests of the machinery waive the absolute rules and the minimum gate (a margin of -1
# and floors of 0 turn a rule off); the policy itself is tested in tests/hemo_model/metrics/
# test_gate_statistics.py and through a real registry in tests/hemo_pipeline/steps/test_promotion.py.
TINY_GATE = ("{min_margin_over_trivial: -1.0, class_margin_over_trivial: -1.0, class_recall_floor: 0.0, "
             "exam_sensitivity_floor: 0.0, min_patients: 1, min_positive_patients: 0, min_improvement: 0.0, "
             "bootstrap: 200, permutations: 200}")

# Hash buckets are lumpy on 6 patients: the salt is one under which the pipeline_data patients fall
# 2 train / 2 val / 2 gate.
TINY_PARAMS = f"""
split: {{val_fraction: 0.3, gate_fraction: 0.3, salt: tiny-1}}
train: {{image_size: 64, epochs: 1, batch_size: 16, cache_images: true}}
refine: {{epochs: 1, batch_size: 8, max_steps: 4}}
gate: {TINY_GATE}
validate: {{image_size: 64}}
"""


def dvc_params(overrides: str) -> str:
    """params.yaml text for a `dvc repro` test: every section dvc.yaml names (DVC refuses missing
    ones), each empty (the method's defaults) unless ``overrides`` (YAML) sets keys in it."""
    import yaml

    from hemo_pipeline.services.settings import SECTIONS

    values = {name: {} for name in SECTIONS}
    for name, section in (yaml.safe_load(overrides) or {}).items():
        values[name].update(section)
    return yaml.safe_dump(values, sort_keys=False)


@pytest.fixture(scope="session")
def pipeline_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 train / 2 test patients at 64 px: enough for a 2-patient validation split."""
    root = tmp_path_factory.mktemp("pipeline") / "data"
    generate_dataset(root, train_patients=6, test_patients=2, image_size=64, seed=1)
    return root


@pytest.fixture
def workdir(pipeline_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project-like working folder: data/ (symlink to the shared tiny set) and params.yaml."""
    (tmp_path / "data").symlink_to(pipeline_data)
    (tmp_path / "params.yaml").write_text(TINY_PARAMS)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HEMO_PARENT_RUN_ID", raising=False)
    return tmp_path


@pytest.fixture(scope="session")
def sqlite_tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One embedded MLflow store for a whole session of in-process step calls."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow-sqlite') / 'mlflow.db'}"
