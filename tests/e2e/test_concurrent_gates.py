"""Six gates race to move ``@champion`` on a real MLflow server, ten rounds in a row (issue 18).

Each round registers six fresh versions and starts six processes (tests/e2e/gate_racer.py). They
all import first, then are released at once: each reads ``@champion``, waits 0-0.3 s and calls
``registry.move_champion(its version, expected=what it read)``. Under the promotion lease the
compare-and-set is real, so per round: promotions form one chain (no two replaced the same
champion: no lost update), exactly the processes that printed "promoted" are in the alias history,
none that got AliasMoved is, and the history and the final ``@champion`` agree. The read-compare-
write it replaced fails this test (see the report of issue 18 item 5).
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from hemo_pipeline.services import registry
from tests.conftest import read_until, running_mlflow_server, step_env

RACERS = 6
ROUNDS = 10
ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _versions(client: MlflowClient, count: int) -> list[str]:
    """``count`` new versions of the model: move_champion needs them to exist, nothing more."""
    try:
        client.create_registered_model(registry.MODEL_NAME)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    return [str(client.create_model_version(registry.MODEL_NAME, "s3://hemo-test/race/model").version)
            for _ in range(count)]


@contextlib.contextmanager
def _racers(url: str) -> Iterator[list[subprocess.Popen[str]]]:
    """RACERS separate processes (tests/e2e/gate_racer.py), imported and waiting for rounds."""
    env = step_env(MLFLOW_TRACKING_URI=url, OMP_NUM_THREADS="1")
    racers = [subprocess.Popen([sys.executable, "-m", "tests.e2e.gate_racer"], cwd=ROOT,
                               env={**env, "HEMO_USER": f"racer-{k}"}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True, start_new_session=True) for k in range(RACERS)]
    try:
        for racer in racers:
            read_until(racer, "ready", timeout=300)
        yield racers
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
            racer.wait(timeout=30)


def _race(racers: list[subprocess.Popen[str]], versions: list[str]) -> dict[str, tuple[str, str, str]]:
    """Release every racer on its version at once; {version: (outcome, expected, racer)}."""
    for racer, version in zip(racers, versions, strict=True):
        assert racer.stdin is not None
        racer.stdin.write(f"{version}\n")
    for racer in racers:
        assert racer.stdin is not None
        racer.stdin.flush()
    outcomes: dict[str, tuple[str, str, str]] = {}
    for k, (racer, version) in enumerate(zip(racers, versions, strict=True)):
        line = read_until(racer, f" {version} ", timeout=240)[-1]
        words = line.split()
        assert len(words) == 3 and words[0] in ("promoted", "moved") and words[1] == version, line
        outcomes[version] = (words[0], words[2], f"racer-{k}")
    return outcomes


def test_six_concurrent_gates_ten_rounds_in_a_row(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A server of its own: the rounds leave @champion on run-less versions, which the session's
    # shared server must never see (its other tests gate real models against @champion).
    with running_mlflow_server(tmp_path) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        client = MlflowClient(url)
        with _racers(url) as racers:
            for round_ in range(1, ROUNDS + 1):
                _check_round(round_, _race(racers, _versions(client, RACERS)))


def _check_round(round_: int, outcomes: dict[str, tuple[str, str, str]]) -> None:
    versions = set(outcomes)
    promoted = [v for v, (outcome, _, _) in outcomes.items() if outcome == "promoted"]
    where = f"round {round_}: {outcomes}"
    assert promoted, f"nobody promoted in {where}"
    replaced = [outcomes[v][1] for v in promoted]
    assert len(set(replaced)) == len(replaced), f"two gates replaced the same champion (lost update) in {where}"

    history = [e for e in registry.alias_history() if e["alias"] == registry.CHAMPION]
    for before, after in zip(history, history[1:], strict=False):
        assert after["previous"] == before["version"], f"broken chain {before} -> {after} in {where}"
    assert [e["seq"] for e in history] == sorted({e["seq"] for e in history}), where
    assert registry.alias_version(registry.CHAMPION) == history[-1]["version"], where
    recorded = {e["version"] for e in history if e["version"] in versions}
    assert recorded == set(promoted), f"history {recorded} but promoted {promoted} in {where}"
    assert all(e["how"] == "gate" and e["by"] == outcomes[e["version"]][2] for e in history
               if e["version"] in versions), where
