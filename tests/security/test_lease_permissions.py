"""The promotion lease on the stack's basic-auth MLflow server, with the accounts docker/mlflow_init.py makes.

The writer takes, releases and (after its holder died) breaks the lease: MLflow makes the creator
of a registered model MANAGE on it, a rename carries that grant to the new name and the delete
sweeps it; the role mlflow_init.py gives the writer (MANAGE on the lease name) also lets it break
a stale lease another account left. The reader can neither take the lease (DENY role) nor remove
the writer's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from hemo_pipeline.services import champion_lease as cl
from tests.security.test_stack import _basic_auth_server, _mlflow_init, _signed_in

pytestmark = pytest.mark.slow

ACCOUNTS = {"MLFLOW_ADMIN_USERNAME": "admin", "MLFLOW_ADMIN_PASSWORD": "admin-pw-0123456789",
            "MLFLOW_WRITER_USERNAME": "hemo-pipeline", "MLFLOW_WRITER_PASSWORD": "writer-pw-0123456789",
            "MLFLOW_READER_USERNAME": "hemo-reader", "MLFLOW_READER_PASSWORD": "reader-pw-0123456789"}
WRITER = (ACCOUNTS["MLFLOW_WRITER_USERNAME"], ACCOUNTS["MLFLOW_WRITER_PASSWORD"])
READER = (ACCOUNTS["MLFLOW_READER_USERNAME"], ACCOUNTS["MLFLOW_READER_PASSWORD"])


def test_the_writer_takes_releases_and_breaks_the_lease(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF (mlflow[auth])")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    init = _mlflow_init()
    with _basic_auth_server(tmp_path, (ACCOUNTS["MLFLOW_ADMIN_USERNAME"], ACCOUNTS["MLFLOW_ADMIN_PASSWORD"])) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        with _signed_in("", ""):
            init.provision(url, ACCOUNTS)
        with _signed_in(*WRITER):
            with cl.champion_lease("gate 1", ttl_s=60, wait_s=0) as held:
                assert cl.holds(held)
            assert cl.read(MlflowClient(url)) is None  # deleted: the creator is MANAGE on it
            dead = cl.acquire("gate that died", ttl_s=0.3, wait_s=0)
            time.sleep(0.5)
            with cl.champion_lease("gate 2", ttl_s=60, wait_s=5) as second:  # renamed away and deleted
                assert second.token != dead.token and cl.holds(second)
                with _signed_in(*READER):
                    with pytest.raises(MlflowException, match="403"):
                        MlflowClient(url).delete_registered_model(cl.LEASE_MODEL)
                    with pytest.raises(MlflowException, match="403"):
                        MlflowClient(url).rename_registered_model(cl.LEASE_MODEL, f"{cl.LEASE_MODEL}.stolen")
                    with pytest.raises(MlflowException, match="403"):  # DENY: not even a wait
                        cl.acquire("reader", ttl_s=60, wait_s=0.2)
            assert cl.read(MlflowClient(url)) is None
            left = [m.name for m in MlflowClient(url).search_registered_models(f"name LIKE '{cl.LEASE_MODEL}%'")]
            assert left == []

            with _signed_in(*READER), pytest.raises(MlflowException, match="403"):  # cannot block promotions
                cl.acquire("a reader's script", ttl_s=60, wait_s=0)
            with _signed_in(ACCOUNTS["MLFLOW_ADMIN_USERNAME"], ACCOUNTS["MLFLOW_ADMIN_PASSWORD"]):
                cl.acquire("an admin's script that died", ttl_s=0.3, wait_s=0)
            time.sleep(0.5)
            with cl.champion_lease("gate 3", ttl_s=60, wait_s=5) as third:  # another account's stale lease
                assert cl.holds(third)
            assert cl.read(MlflowClient(url)) is None


def test_the_init_code_names_the_lease_the_pipeline_takes() -> None:
    assert _mlflow_init().LEASE == cl.LEASE_MODEL
