"""hemo_retraining: scheduled retraining over the same `hemo` steps that dvc.yaml runs.

start_run -> sync_data -> validate -> train -> refine -> evaluate -> gate -> promoted? -> score

* Schedule: weekly (Monday 03:00 UTC) and whenever new labels land (asset `hemo_labels`).
* Every task is a thin call of one `hemo <step>` through a runner chosen per DAG run: param
  `runner` (local | docker | kubernetes), or the Airflow Variable `hemo_runner` when the param
  is `auto`. No step logic lives here.
* Each DAG run works in its own folder `<runs>/<run id>`, so a retry or a second run never
  overwrites another run's checkpoints, reports or predictions.
* One MLflow run tree per DAG run: `start_run` creates the parent run and every step nests under
  it (HEMO_PARENT_RUN_ID); all runs carry the DAG run id as a tag.
* Bad input (validation failed, user errors) fails the task without retries; other failures
  are retried with exponential back-off.

Parse time imports only the Airflow SDK and the standard library (no torch, MLflow or GX).
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import Asset, AssetOrTimeSchedule, CronTriggerTimetable, Param, dag, get_current_context, task

PROJECT_DIR = Path(os.environ.get("HEMO_PROJECT_DIR", Path(__file__).resolve().parents[1]))
RUNS_DIR = Path(os.environ.get("HEMO_RUNS_DIR", PROJECT_DIR / "runs"))
LABELS = Asset(name="hemo_labels", uri=os.environ.get("HEMO_LABELS_URI", f"file://{PROJECT_DIR}/data/train.csv"))

STEP_TIMEOUTS = {
    "start_run": timedelta(minutes=10),
    "sync_data": timedelta(hours=2),
    "validate": timedelta(minutes=60),
    "train": timedelta(hours=24),
    "refine": timedelta(hours=12),
    "evaluate": timedelta(hours=2),
    "gate": timedelta(hours=2),
    "score": timedelta(hours=6),
}

default_args = {
    "owner": "hemo",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
}


def _settings(parent_run_id: str | None = None) -> Any:
    """Runner settings for the current task, from the DAG run's params and Airflow Variables."""
    from airflow.sdk import Variable

    from components.runners import StepSettings, safe_run_key

    context = get_current_context()
    params = context["params"]
    run_id = context["run_id"]
    mlflow_uri = (
        os.environ.get("MLFLOW_TRACKING_URI")
        or Variable.get("hemo_mlflow_tracking_uri", default=None)
        or f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
    )
    overrides = {k: params.get(k) for k in ("epochs", "image_size", "min_improvement")}
    return StepSettings(
        project_dir=PROJECT_DIR,
        run_dir=RUNS_DIR / safe_run_key(run_id),
        mlflow_uri=mlflow_uri,
        dag_run_id=run_id,
        parent_run_id=parent_run_id,
        overrides=overrides,
        image=Variable.get("hemo_image", default=None) or os.environ.get("HEMO_IMAGE", "ghcr.io/hemo-pipeline/hemo:0.1.0"),
    )


def _runner() -> str:
    from airflow.sdk import Variable

    chosen = get_current_context()["params"]["runner"]
    if chosen == "auto":
        chosen = Variable.get("hemo_runner", default="local")
    return chosen


def run_step(step: str) -> str:
    """Run one `hemo` step with the chosen runner; user errors fail without retry. The parent
    MLflow run id comes from start_run's XCom (pulled here, so the graph stays a plain chain)."""
    from airflow.sdk.exceptions import AirflowFailException

    from components import runners

    context = get_current_context()
    parent_run_id = None if step == "start-run" else context["ti"].xcom_pull(task_ids="start_run")
    settings = _settings(parent_run_id)
    runner = _runner()
    task_id = context["task_instance"].task_id
    if runner == "local":
        try:
            return runners.run_local(step, settings)
        except runners.StepFailed as exc:
            if exc.user_error:
                raise AirflowFailException(str(exc)) from exc
            raise
    if runner == "docker":
        operator = runners.docker_operator(f"{task_id}_docker", step, settings)
    elif runner == "kubernetes":
        operator = runners.kubernetes_operator(f"{task_id}_pod", step, settings)
    else:
        raise AirflowFailException(f"unknown runner {runner!r}; use one of {runners.RUNNERS}")
    operator.execute(context)
    return ""


@dag(
    dag_id="hemo_retraining",
    description="Retrain, gate and promote the intracranial hemorrhage classifier; score with the champion.",
    schedule=AssetOrTimeSchedule(timetable=CronTriggerTimetable("0 3 * * 1", timezone="UTC"), assets=[LABELS]),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args=default_args,
    dagrun_timeout=timedelta(hours=48),
    tags=["hemo", "ml", "retraining"],
    params={
        "runner": Param("auto", enum=["auto", "local", "docker", "kubernetes"],
                        description="where steps run; auto = Airflow Variable hemo_runner (default local)"),
        "epochs": Param(None, type=["null", "integer"], minimum=1, description="override train.epochs"),
        "image_size": Param(None, type=["null", "integer"], minimum=32, description="override train.image_size"),
        "min_improvement": Param(None, type=["null", "number"], minimum=0,
                                 description="override gate.min_improvement"),
        "sync_data": Param(True, type="boolean", description="dvc pull before validating (skipped without a remote)"),
    },
    doc_md=__doc__,
)
def hemo_retraining() -> None:
    @task(execution_timeout=STEP_TIMEOUTS["start_run"])
    def start_run() -> str:
        """Create the parent MLflow run of this DAG run; its id is passed to every step."""
        line = run_step("start-run")
        if line:
            return line.strip()
        return json.loads((_settings().run_dir / "outputs" / "pipeline_run.json").read_text())["run_id"]

    @task(execution_timeout=STEP_TIMEOUTS["sync_data"])
    def sync_data() -> str:
        """`dvc pull` the versioned data; skipped when disabled or no DVC remote is configured."""
        import subprocess
        import sys

        from airflow.sdk.exceptions import AirflowSkipException

        if not get_current_context()["params"]["sync_data"]:
            raise AirflowSkipException("sync_data is off for this run")
        dvc = str(Path(sys.executable).with_name("dvc"))
        remotes = subprocess.run([dvc, "remote", "list"], cwd=PROJECT_DIR, capture_output=True, text=True)
        if remotes.returncode != 0 or not remotes.stdout.strip():
            raise AirflowSkipException("no DVC remote configured: using the data already in the project")
        subprocess.run([dvc, "pull", "--quiet"], cwd=PROJECT_DIR, check=True)
        return remotes.stdout.split()[0]

    def step_task(step: str, **kwargs: Any):
        @task(task_id=step, execution_timeout=STEP_TIMEOUTS[step], **kwargs)
        def _run() -> str:
            return run_step(step)

        _run.__doc__ = f"`hemo {step}` through the selected runner."
        return _run

    @task.branch(task_id="promoted")
    def promoted() -> str:
        """Score only when the gate moved @champion; otherwise stop."""
        decision = json.loads((_settings().run_dir / "reports" / "gate.json").read_text())
        print(f"gate decision: {decision['reason']}")
        return "score" if decision["promoted"] else "not_promoted"

    @task(task_id="not_promoted")
    def not_promoted() -> None:
        """The champion is unchanged; nothing to score."""

    parent = start_run()
    synced = sync_data()
    # validate also runs when sync_data was skipped (no remote), never after it failed.
    validated = step_task("validate", trigger_rule="none_failed", retries=0)()
    trained = step_task("train")()
    refined = step_task("refine")()
    evaluated = step_task("evaluate")()
    gated = step_task("gate")()
    scored = step_task("score")()
    branch = promoted()
    parent >> synced >> validated >> trained >> refined >> evaluated >> gated >> branch
    branch >> [scored, not_promoted()]


hemo_retraining()
