"""Shared, session-scoped fixtures: a tiny synthetic data set (and, later, servers).

Everything is generated into pytest's temp folders; tests that change data work on a copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hemo_model.synth import generate_dataset

TINY = {"train_patients": 4, "test_patients": 2, "image_size": 64, "seed": 7}


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
