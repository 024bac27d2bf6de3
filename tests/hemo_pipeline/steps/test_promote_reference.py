"""`hemo promote --reference`, and the alias history every leased move leaves (embedded store).

Versions are created directly (a dummy source): moving aliases needs versions to exist, nothing
more. The gate's own promotions are tested in test_promotion.py and tests/e2e/test_concurrent_gates.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from hemo_pipeline.cli import main
from hemo_pipeline.exit_codes import EXIT_TRANSIENT
from hemo_pipeline.services import champion_lease, registry

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("HEMO_PARENT_RUN_ID", raising=False)
    monkeypatch.delenv(champion_lease.WAIT_ENV, raising=False)
    monkeypatch.setenv("HEMO_USER", "dr-test")
    return tmp_path


def _versions(count: int) -> list[str]:
    client = registry.client()
    client.create_registered_model(registry.MODEL_NAME)
    return [str(client.create_model_version(registry.MODEL_NAME, "s3://hemo-test/model").version)
            for _ in range(count)]


def _no_lease_left() -> bool:
    return champion_lease.read(registry.client()) is None


def test_promote_reference_sets_the_alias_tags_and_history(store: Path, capsys: pytest.CaptureFixture) -> None:
    v1, v2 = _versions(2)
    assert main(["promote", "--reference", "--version", v1, "--reason", "approved baseline"]) == 0
    assert registry.reference_version() == v1 and registry.alias_version(registry.CHAMPION) is None
    tags = registry.client().get_model_version(registry.MODEL_NAME, v1).tags
    assert tags["reference.by"] == "dr-test" and tags["reference.reason"] == "approved baseline" and tags["reference.at"]
    assert main(["promote", "--reference", "--version", v2, "--reason", "new baseline"]) == 0
    assert f"@reference v{v1} -> v{v2}" in capsys.readouterr().out
    assert main(["promote", "--reference", "--version", v2, "--reason", "again"]) == 0
    assert "already @reference; nothing changed" in capsys.readouterr().out
    history = registry.alias_history()
    assert [(e["seq"], e["alias"], e["version"], e["previous"], e["how"]) for e in history] == [
        (1, "reference", v1, None, "reference"), (2, "reference", v2, v1, "reference")]
    assert history[0]["by"] == "dr-test" and history[0]["reason"] == "approved baseline"
    assert history[0]["run_id"] is None and history[0]["at"]
    assert _no_lease_left()


def test_promote_and_rollback_are_recorded_in_one_history(store: Path) -> None:
    v1, v2 = _versions(2)
    long_reason = "x" * 1000
    assert main(["promote", "--version", v1, "--reason", "first"]) == 0
    assert main(["promote", "--version", v2, "--reason", long_reason]) == 0
    assert main(["rollback", "--reason", "v2 misses bleeds"]) == 0
    assert main(["promote", "--reference", "--version", v1, "--reason", "baseline"]) == 0
    history = registry.alias_history()
    assert [(e["seq"], e["alias"], e["version"], e["previous"], e["how"]) for e in history] == [
        (1, "champion", v1, None, "manual"), (2, "champion", v2, v1, "manual"),
        (3, "champion", v1, v2, "rollback"), (4, "reference", v1, None, "reference")]
    assert len(history[1]["reason"]) == registry.REASON_CHARS
    tags = registry.client().get_registered_model(registry.MODEL_NAME).tags
    assert sorted(k for k in tags if k.startswith(registry.HISTORY_PREFIX)) == [
        f"{registry.HISTORY_PREFIX}{n:06d}" for n in (1, 2, 3, 4)]
    assert registry.alias_version(registry.CHAMPION) == v1 and registry.alias_version(registry.PREVIOUS) == v2
    assert _no_lease_left()


def test_promote_waits_for_the_lease_then_exits_3_naming_the_holder(store: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture) -> None:
    (v1,) = _versions(1)
    monkeypatch.setenv(champion_lease.WAIT_ENV, "0.3")
    with champion_lease.champion_lease("gate of run 42", ttl_s=60):
        assert main(["promote", "--version", v1, "--reason", "hotfix"]) == EXIT_TRANSIENT
        assert main(["promote", "--reference", "--version", v1, "--reason", "baseline"]) == EXIT_TRANSIENT
    err = capsys.readouterr().err
    assert "held by gate of run 42 since" in err and champion_lease.WAIT_ENV in err
    assert registry.alias_version(registry.CHAMPION) is None and registry.reference_version() is None
    assert registry.alias_history() == []


def test_a_write_that_bypassed_the_lease_is_reported(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v1, v2 = _versions(2)
    reads = iter([None, v2])  # the compare sees no champion; the re-read after writing sees v2
    monkeypatch.setattr(registry, "alias_version", lambda alias: next(reads))
    with pytest.raises(registry.LeaseBypassed, match="without the promotion lease"):
        registry.move_champion(v1, None, how="gate", reason="test")
    assert registry.alias_history() == [] and _no_lease_left()


def _alias_writes(path: Path) -> list[tuple[str, str]]:
    """(enclosing function, alias argument source) of each set_registered_model_alias call."""
    tree = ast.parse(path.read_text())
    found = []
    for function in ast.walk(tree):
        if isinstance(function, ast.FunctionDef):
            for node in ast.walk(function):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                        and node.func.attr == "set_registered_model_alias"):
                    found.append((function.name, ast.unparse(node.args[1])))
    return found


def test_only_move_reference_sets_the_reference_alias() -> None:
    writers = {p.relative_to(ROOT).as_posix(): _alias_writes(p) for p in (ROOT / "hemo_pipeline").rglob("*.py")}
    writers = {path: calls for path, calls in writers.items() if calls}
    assert set(writers) == {"hemo_pipeline/services/registry.py"}
    calls = writers["hemo_pipeline/services/registry.py"]
    assert ("move_reference", "REFERENCE") in calls
    assert all(alias in ("CHAMPION", "PREVIOUS", "CHALLENGER") for function, alias in calls
               if function != "move_reference"), calls
    assert {function for function, alias in calls if alias in ("CHAMPION", "PREVIOUS")} == {"move_champion"}


def test_a_move_the_history_missed_is_reconciled_before_the_next(store: Path) -> None:
    """A writer that died between moving @champion and recording it leaves a gap: the next writer
    records what it finds first, so the history stays one chain."""
    v1, v2 = _versions(2)
    registry.client().set_registered_model_alias(registry.MODEL_NAME, registry.CHAMPION, v1)  # moved, not recorded
    assert main(["promote", "--version", v2, "--reason", "next"]) == 0
    history = registry.alias_history()
    assert [(e["alias"], e["version"], e["previous"], e["how"]) for e in history] == [
        ("champion", v1, None, "reconciled"), ("champion", v2, v1, "manual")]
    assert _no_lease_left()


def test_a_promotion_judged_against_a_reference_that_moved_since_changes_nothing(store: Path) -> None:
    """The gate measured drift against @reference v1; a person approved v2 as reference before the
    gate wrote: the gate's promotion is refused (exit 3 in the step), the champion stays."""
    v1, v2, v3 = _versions(3)
    assert main(["promote", "--reference", "--version", v1, "--reason", "baseline"]) == 0
    assert main(["promote", "--reference", "--version", v2, "--reason", "new baseline"]) == 0
    with pytest.raises(registry.AliasMoved, match="@reference moved from v1 to v2"):
        registry.move_champion(v3, None, how="gate", reason="drift within budget of v1", expected_reference=v1)
    assert registry.alias_version(registry.CHAMPION) is None and _no_lease_left()
    assert registry.move_champion(v3, None, how="gate", reason="judged against v2", expected_reference=v2) is None
    assert registry.alias_version(registry.CHAMPION) == v3


def test_a_reference_move_the_history_missed_is_reconciled(store: Path) -> None:
    v1, v2 = _versions(2)
    registry.client().set_registered_model_alias(registry.MODEL_NAME, registry.REFERENCE, v1)  # moved, not recorded
    assert main(["promote", "--reference", "--version", v2, "--reason", "next"]) == 0
    assert [(e["alias"], e["version"], e["previous"], e["how"]) for e in registry.alias_history()] == [
        ("reference", v1, None, "reconciled"), ("reference", v2, v1, "reference")]
