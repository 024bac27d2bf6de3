"""The promotion lease against a real MLflow tracking server (its REST API and SQLite backend)."""

from __future__ import annotations

import time

import pytest
from mlflow import MlflowClient

from hemo_pipeline.exit_codes import EXIT_TRANSIENT
from hemo_pipeline.services import champion_lease as cl
from hemo_pipeline.services import registry
from hemo_pipeline.services.errors import UserError

pytestmark = pytest.mark.slow


def _leases(client: MlflowClient) -> list[str]:
    """Every registered model the lease ever left (the lease and any renamed-away copy)."""
    return sorted(m.name for m in client.search_registered_models(f"name LIKE '{cl.LEASE_MODEL}%'"))


@pytest.fixture
def client(mlflow_server: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.delenv(cl.WAIT_ENV, raising=False)
    mlflow_client = MlflowClient(mlflow_server)
    yield mlflow_client
    for name in _leases(mlflow_client):  # never leave a lease for the next test
        mlflow_client.delete_registered_model(name)


def test_the_lease_name_follows_the_registered_model() -> None:
    assert cl.LEASE_MODEL == f"{registry.MODEL_NAME}.champion-lease"


def test_the_lease_is_exclusive_and_a_second_acquirer_times_out(client: MlflowClient) -> None:
    with cl.champion_lease("gate A", ttl_s=60) as held:
        assert _leases(client) == [cl.LEASE_MODEL]
        assert client.get_registered_model(cl.LEASE_MODEL).tags["token"] == held.token
        start = time.monotonic()
        with pytest.raises(cl.LeaseBusy) as busy:
            cl.acquire("gate B", ttl_s=60, wait_s=0.8)
        assert time.monotonic() - start >= 0.8
        assert busy.value.exit_code == EXIT_TRANSIENT
        message = str(busy.value)
        assert "held by gate A since" in message and cl.WAIT_ENV in message and "\n" not in message
        assert cl.holds(held)
    assert _leases(client) == []  # released on leaving the block
    with cl.champion_lease("gate B", ttl_s=60, wait_s=0):  # and free again
        pass


def test_the_wait_comes_from_the_environment(client: MlflowClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cl.WAIT_ENV, "0.3")
    assert cl.wait_seconds() == 0.3 and cl.wait_seconds(5) == 5
    with cl.champion_lease("gate A", ttl_s=60):
        start = time.monotonic()
        with pytest.raises(cl.LeaseBusy):
            cl.acquire("gate B")
        assert 0.3 <= time.monotonic() - start < 20
    monkeypatch.setenv(cl.WAIT_ENV, "soon")
    with pytest.raises(UserError, match=cl.WAIT_ENV):
        cl.wait_seconds()


def test_a_waiting_acquirer_gets_the_lease_when_it_is_released(client: MlflowClient) -> None:
    import threading

    first = cl.acquire("gate A", ttl_s=60)
    threading.Timer(0.5, cl.release, args=(first,)).start()
    with cl.champion_lease("gate B", ttl_s=60, wait_s=30) as second:
        assert second.holder == "gate B" and client.get_registered_model(cl.LEASE_MODEL).tags["holder"] == "gate B"


def test_a_stale_lease_is_broken_and_its_late_release_deletes_nothing(client: MlflowClient) -> None:
    dead = cl.acquire("gate that died", ttl_s=0.3)
    time.sleep(0.5)
    with cl.champion_lease("gate B", ttl_s=60, wait_s=5) as alive:
        assert _leases(client) == [cl.LEASE_MODEL]  # the stale one was renamed away and deleted
        assert not cl.holds(dead)
        assert cl.release(dead) is False  # not our token any more: B's lease stays
        assert cl.holds(alive) and client.get_registered_model(cl.LEASE_MODEL).tags["token"] == alive.token
    assert _leases(client) == []


def test_release_deletes_only_our_own_token(client: MlflowClient) -> None:
    held = cl.acquire("gate A", ttl_s=60)
    impostor = cl.Lease(cl.LEASE_MODEL, "gate A", "not-our-token", held.acquired_at, held.expires_at)
    assert cl.release(impostor) is False
    assert cl.holds(held)
    assert cl.release(held) is True and _leases(client) == []
    assert cl.release(held) is False  # twice: nothing left to delete


def test_the_lease_is_released_when_the_body_fails(client: MlflowClient) -> None:
    with pytest.raises(RuntimeError, match="boom"), cl.champion_lease("gate A", ttl_s=60):
        raise RuntimeError("boom")
    assert _leases(client) == []


def test_only_one_breaker_removes_a_stale_lease(client: MlflowClient) -> None:
    cl.acquire("gate that died", ttl_s=0.2)
    time.sleep(0.4)
    stale = cl.read(client)
    assert stale is not None and stale.expired()
    assert cl.break_stale(client, stale) is True
    assert cl.break_stale(client, stale) is False  # a second breaker of the same lease: nothing to do
    assert _leases(client) == []


def test_a_breaker_that_read_too_early_gives_a_live_lease_back(client: MlflowClient) -> None:
    cl.acquire("gate that died", ttl_s=0.2)
    time.sleep(0.4)
    stale = cl.read(client)
    assert stale is not None
    with cl.champion_lease("gate B", ttl_s=60, wait_s=5) as alive:  # B broke it and holds a fresh one
        assert cl.break_stale(client, stale) is False  # a slow breaker acting on its old read
        assert cl.holds(alive) and _leases(client) == [cl.LEASE_MODEL]
