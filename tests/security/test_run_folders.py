"""Attack: a run id chosen so that the run folder escapes the runs folder or is another run's.

Airflow's default run-id pattern accepts '..', '.', 'a/b'; the old mapping kept '.' (so '..'
made the run folder the runs folder's parent) and mapped 'a:b' and 'a_b' to one folder, where
`--resume auto` would continue the other run's checkpoint. Every orchestrator derives the folder
with hemo_pipeline.orchestration.runners.safe_run_key (the DAG, the runners, the Kubeflow twin)."""

from __future__ import annotations

import random
import re
import uuid
from pathlib import Path

import pytest

from hemo_pipeline.orchestration.runners import StepSettings, prepare_run_dir, safe_run_key

REPO = Path(__file__).resolve().parents[2]
NASTY = ["..", ".", "", "/", "a/b", "../a", "a/../../b", "/etc/passwd", "a\\b", "..\\..", "a\x00b", "~", "-rf",
         ".hidden", "a b", "\n", "manual__2026-01-01T00:00:00+00:00", "x" * 250, "é" * 200, "../" * 90]


def _assert_one_plain_component(name: str) -> None:
    assert name not in ("", ".", ".."), name
    assert "/" not in name and "\\" not in name and "\x00" not in name, name
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name), name
    assert len(name.encode()) <= 255, len(name)


@pytest.mark.parametrize("run_id", NASTY, ids=lambda r: repr(r[:20]))
def test_a_run_folder_is_one_plain_name_inside_the_runs_folder(run_id: str, tmp_path: Path) -> None:
    name = safe_run_key(run_id)
    _assert_one_plain_component(name)
    runs = tmp_path / "runs"
    assert (runs / name).resolve().parent == runs.resolve()


@pytest.mark.parametrize("run_id", ["..", ".", "a/../../escaped"])
def test_preparing_the_run_folder_of_a_hostile_id_creates_it_inside_the_runs_folder(run_id: str, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    settings = StepSettings(project_dir=tmp_path / "project", run_dir=runs / safe_run_key(run_id),
                            mlflow_uri="sqlite:///x.db", dag_run_id=run_id)
    made = prepare_run_dir(settings)
    assert made.resolve().parent == runs.resolve()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]  # nothing created beside the runs folder


@pytest.mark.parametrize("first, second", [("a:b", "a_b"), ("a/b", "a_b"), ("a+b", "a:b"), ("..", "__"), (".", "_"),
                                           ("ABC", "abc"), ("manual__2026-01-01T00:00:00+00:00",
                                                            "manual__2026-01-01T00_00_00_00_00"),
                                           ("x" * 250 + "1", "x" * 250 + "2")])
def test_distinct_run_ids_never_share_a_folder(first: str, second: str) -> None:
    a, b = safe_run_key(first), safe_run_key(second)
    assert a != b
    assert a.lower() != b.lower()  # not even on a case-insensitive file system


def test_a_run_cannot_resume_another_runs_checkpoint(tmp_path: Path) -> None:
    """The attack end to end on the folder level: run 'a_b' left a checkpoint; a run 'a:b' must
    not find it where `--resume auto` looks (outputs/train/last.pt in its own run folder)."""
    runs = tmp_path / "runs"
    checkpoint = runs / safe_run_key("a_b") / "outputs" / "train" / "last.pt"
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"victim")
    assert not (runs / safe_run_key("a:b") / "outputs" / "train" / "last.pt").exists()


def test_many_random_ids_map_to_distinct_plain_names() -> None:
    rng = random.Random(16)
    alphabet = "aA0_-.:/+ \\~é"
    ids = {"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(20000)}
    names = {}
    for run_id in ids:
        name = safe_run_key(run_id)
        _assert_one_plain_component(name)
        assert names.setdefault(name.lower(), run_id) == run_id, f"{run_id!r} and {names[name.lower()]!r} share {name}"
    assert safe_run_key("a:b") == safe_run_key("a:b")  # stable: a retry finds its own folder


def test_kubeflow_run_ids_name_their_folder_as_the_compiled_pipeline_does() -> None:
    """The compiled pipeline names the folder by the run-id placeholder (resolved on the cluster to a
    lower-case UUID); the mapping keeps such ids, so cluster and local twin agree."""
    for _ in range(100):
        run_id = str(uuid.uuid4())
        assert safe_run_key(run_id) == run_id
    assert safe_run_key("19024073") == "19024073"  # kfp.local's run ids


def test_every_orchestrator_derives_the_folder_with_the_one_function() -> None:
    dag = (REPO / "dags" / "hemo_retraining.py").read_text()
    assert re.search(r"run_dir=RUNS_DIR / safe_run_key\(run_id\)", dag)
    steps = (REPO / "pipelines" / "steps.py").read_text()
    assert "safe_run_key(text(values[\"run_key\"]))" in steps
    sources = [*(REPO / "hemo_pipeline").rglob("*.py"), *(REPO / "pipelines").glob("*.py"), REPO / "dags" / "hemo_retraining.py"]
    sanitising = {path.name: len(re.findall(r"re\.sub\([^)]*run_id", path.read_text())) for path in sources}
    assert {name: n for name, n in sanitising.items() if n} == {"runners.py": 1}, "a second run-id sanitiser"
