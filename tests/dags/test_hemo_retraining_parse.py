"""The DAG file: imports cleanly and fast, without torch/MLflow/GX, with the specified graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"

PROBE = r"""
import json, sys, time
started = time.perf_counter()
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
seconds = time.perf_counter() - started
dag = bag.dags.get("hemo_retraining")
tasks = {t.task_id: sorted(t.downstream_task_ids) for t in dag.tasks} if dag else {}
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "tasks": tasks,
    "seconds": seconds,
    "heavy": [m for m in ("torch", "mlflow", "great_expectations", "torchvision") if m in sys.modules],
    "schedule": type(dag.timetable).__name__ if dag else None,
    "max_active_runs": dag.max_active_runs if dag else None,
    "catchup": dag.catchup if dag else None,
    "params": sorted(dag.params.keys()) if dag else [],
    "retries": {t.task_id: t.retries for t in dag.tasks} if dag else {},
    "timeouts": {t.task_id: t.execution_timeout.total_seconds() if t.execution_timeout else None
                 for t in dag.tasks} if dag else {},
}))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow-parse")
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(DAGS)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_import_errors_and_nothing_heavy(parsed: dict) -> None:
    assert parsed["errors"] == {}
    assert parsed["heavy"] == [], f"DAG parse imported {parsed['heavy']}"
    print(f"DagBag parse of dags/: {parsed['seconds']:.2f} s")
    assert parsed["seconds"] < 30


def test_task_graph(parsed: dict) -> None:
    """The pipeline's order, plus the edges of the values tasks hand each other (TaskFlow return
    values): start_run's result (the parent run) goes to every step, the gate's to the plan."""
    steps = ["end_run", "evaluate", "gate", "merge_scores", "refine", "report", "score_shard", "sync_data", "train",
             "validate"]
    assert parsed["tasks"] == {
        "start_run": steps,
        "sync_data": ["end_run", "validate"],
        "validate": ["end_run", "train"],
        "train": ["end_run", "refine"],
        "refine": ["end_run", "evaluate"],
        "evaluate": ["end_run", "gate"],
        "gate": ["end_run", "promoted", "score"],
        "promoted": ["end_run", "not_promoted", "score"],
        "score": ["end_run", "score_shard"],
        "score_shard": ["end_run", "merge_scores"],
        "merge_scores": ["end_run", "report"],
        "report": ["end_run"],
        "not_promoted": ["end_run"],
        "end_run": [],
    }


def test_scheduling_and_safety_settings(parsed: dict) -> None:
    assert parsed["schedule"] == "AssetOrTimeSchedule"
    assert parsed["max_active_runs"] == 1 and parsed["catchup"] is False
    assert parsed["params"] == ["epochs", "image_size", "min_improvement", "report", "runner", "score_shards", "set",
                                "sync_data"]
    assert parsed["retries"]["train"] == 2 and parsed["retries"]["validate"] == 0
    assert all(parsed["timeouts"].values()), parsed["timeouts"]  # every task has a limit of its own
    assert parsed["timeouts"]["score"] < parsed["timeouts"]["score_shard"]  # the plan is one registry call
    assert parsed["timeouts"]["train"] > parsed["timeouts"]["validate"]
