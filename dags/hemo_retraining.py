"""hemo_retraining: scheduled retraining over the same `hemo` steps that dvc.yaml runs.

start_run -> sync_data -> validate -> train -> refine -> evaluate -> gate -> promoted?
    -> score (plan shards) -> score_shard x N (dynamic task mapping) -> merge_scores -> report
     | not_promoted
    -> end_run (always)

* Schedule: weekly (Monday 03:00 UTC) and whenever new labels land (asset `hemo_labels`).
* Every task is a thin call of one `hemo <step>` through a runner chosen per DAG run: param
  `runner` (local | docker | kubernetes), or the Airflow Variable `hemo_runner` when the param
  is `auto`. No step logic lives here.
* Each DAG run works in its own folder `<runs>/<folder of the run id>` (runners.safe_run_key: a
  plain id as it is, any other a readable prefix + a hash of the id), so a retry or a second run
  never overwrites another run's checkpoints, reports or predictions, and no run id ('..', 'a/b',
  'a:b' next to 'a_b') reaches outside the runs folder or into another run's folder.
* Credentials never travel as task arguments or container environment: step containers mount the
  secrets named by HEMO_STEP_SECRETS (a Docker volume / Kubernetes Secret) and get only its path.
* One MLflow run tree per DAG run: `start_run` creates the parent run and every step nests under
  it (HEMO_PARENT_RUN_ID); all runs carry the DAG run id as a tag; `end_run` ends it FINISHED, or
  FAILED when any task failed (and then fails itself, so the DAG run reads failed).
* Values cross tasks as TaskFlow return values (XCom): start_run's result (the parent run id) is
  every step's argument, the gate's result the branch's and the scoring plan's. Each runner hands
  back the step's JSON result, so nothing is read from a disk only a container or pod could see.
* `sync_data` is `hemo sync-data` (dvc pull data.dvc) on the worker, where the project lives.
* `report` is `hemo report` on the worker: the DICOM SR and FHIR reports of the scored series
  (no Secondary Captures: the DAG's score draws no overlays), stored on the PACS where the site
  configured it (Airflow Variables
  `hemo_report_mapping`, `hemo_report_source`, `hemo_report_out`, optional `hemo_report_push` and
  `hemo_report_allow_http`; README "Results back to the PACS"); skipped where none is set. It runs
  on the worker whatever the runner, because the UID mapping and the objects name patients and stay
  on the worker's private disk; it reads the run folder's merged scores (with the kubernetes runner
  the worker must mount the runs volume the pods write to).
* Every task has its own timeout (STEP_TIMEOUTS).
* Bad input (validation failed, user errors: exit 1/2) and bugs (70) fail the task without retries; other
  failures are retried with exponential back-off, and train/refine resume from their checkpoint.

Parse time imports only the Airflow SDK and the standard library (no torch, MLflow or GX).
"""

from __future__ import annotations

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
    "promoted": timedelta(minutes=5),
    "score": timedelta(minutes=10),  # the plan: one registry call
    "score_shard": timedelta(hours=6),
    "merge_scores": timedelta(minutes=30),
    "report": timedelta(hours=2),
    "not_promoted": timedelta(minutes=5),
    "end_run": timedelta(minutes=10),
}
"""One limit per task, sized to what it does (a 24-hour train, a one-call plan)."""

default_args = {
    "owner": "hemo",
    "retries": 2,
    "retry_delay": timedelta(seconds=int(os.environ.get("HEMO_RETRY_DELAY_S", "120"))),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=30),
}


def _settings(parent_run_id: str | None = None) -> Any:
    """Runner settings for the current task, from the DAG run's params and Airflow Variables."""
    from airflow.sdk import Variable

    from hemo_pipeline.orchestration.runners import StepSettings, safe_run_key

    context = get_current_context()
    params = context["params"]
    run_id = context["run_id"]
    mlflow_uri = (
        os.environ.get("MLFLOW_TRACKING_URI")
        or Variable.get("hemo_mlflow_tracking_uri", default=None)
        or f"sqlite:///{PROJECT_DIR / 'mlflow.db'}"
    )
    overrides = {k: params.get(k) for k in ("epochs", "image_size", "min_improvement")}
    for assignment in params.get("set") or []:  # "section.key=value", checked by the step's settings layer
        key, _, value = str(assignment).partition("=")
        overrides[key.strip()] = value
    uid, gid = os.environ.get("HEMO_CONTAINER_UID"), os.environ.get("HEMO_CONTAINER_GID")
    return StepSettings(
        project_dir=PROJECT_DIR,
        run_dir=RUNS_DIR / safe_run_key(run_id),
        mlflow_uri=mlflow_uri,
        dag_run_id=run_id,
        parent_run_id=parent_run_id,
        overrides=overrides,
        image=Variable.get("hemo_image", default=None) or os.environ.get("HEMO_IMAGE", "ghcr.io/hemo-pipeline/hemo:0.1.0"),
        uid=int(uid) if uid else None,
        gid=int(gid) if gid else None,
        step_secrets=os.environ.get("HEMO_STEP_SECRETS") or None,
    )


def _runner() -> str:
    from airflow.sdk import Variable

    chosen = get_current_context()["params"]["runner"]
    if chosen == "auto":
        chosen = Variable.get("hemo_runner", default="local")
    return chosen


def run_step(step: str, pipeline: dict[str, Any] | None, runner: str | None = None,
             extra: list[str] | tuple[str, ...] = ()) -> dict[str, Any] | None:
    """Run one `hemo` step with the chosen runner and return its result (the task's return value,
    so its XCom); user errors and bugs (exit 1/2/70) fail without retry. ``pipeline`` is
    start_run's result: the parent MLflow run every step nests under."""
    from airflow.sdk.exceptions import AirflowFailException

    from hemo_pipeline.orchestration import runners

    context = get_current_context()
    settings = _settings((pipeline or {}).get("run_id"))
    if extra:
        settings.extra_args = tuple(extra)
    runner = runner or _runner()
    task_id = context["task_instance"].task_id
    if runner not in runners.RUNNERS:
        raise AirflowFailException(f"unknown runner {runner!r}; use one of {runners.RUNNERS}")
    try:
        if runner == "local":
            return runners.run_local(step, settings)
        if runner == "docker":
            runners.prepare_run_dir(settings)  # before the daemon could create it as root
            return runners.docker_operator(f"{task_id}_docker", step, settings).execute(context)
        return runners.kubernetes_operator(f"{task_id}_pod", step, settings).execute(context)
    except runners.StepFailed as exc:
        if exc.user_error:
            raise AirflowFailException(str(exc)) from exc
        raise
    except Exception as exc:  # a container/pod failure: its exit code decides retry or not
        if runner != "local" and runners.exit_code_of(exc) in runners.USER_ERROR_CODES:
            raise AirflowFailException(f"hemo {step} failed on bad input (exit {runners.exit_code_of(exc)}): {exc}") from exc
        raise


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
        "sync_data": Param(True, type="boolean", description="dvc pull data.dvc before validating (skipped without a remote)"),
        "score_shards": Param(1, type="integer", minimum=1,
                              description="split scoring over this many mapped tasks (merged into one set of files)"),
        "report": Param(True, type="boolean",
                        description="report the scores to the PACS where the site configured it (hemo_report_* Variables)"),
        "set": Param([], type="array", items={"type": "string"},
                     description="more settings overrides, each section.key=value (as `hemo <step> --set`)"),
    },
    doc_md=__doc__,
)
def hemo_retraining() -> None:
    # Task arguments are typed Any: at parse time they are XComArgs, at run time the upstream task's
    # return value (start_run's dict with the parent run id; the gate's decision).
    @task(execution_timeout=STEP_TIMEOUTS["start_run"])
    def start_run() -> dict[str, Any]:
        """Create the parent MLflow run of this DAG run; its result (the run id) is the argument
        of every later task."""
        result = run_step("start-run", None)
        if not result or not result.get("run_id"):
            raise RuntimeError("hemo start-run returned no run id")
        return result

    @task(execution_timeout=STEP_TIMEOUTS["sync_data"])
    def sync_data(pipeline: Any) -> dict[str, Any] | None:
        """`hemo sync-data` (dvc pull data.dvc) on this worker, where the project lives; skipped
        when the run turns it off or no DVC remote is configured."""
        from airflow.sdk.exceptions import AirflowSkipException

        if not get_current_context()["params"]["sync_data"]:
            raise AirflowSkipException("sync_data is off for this run")
        result = run_step("sync-data", pipeline, runner="local")
        if result and result.get("skipped"):
            raise AirflowSkipException(result.get("reason", "nothing to pull"))
        return result

    def step_task(step: str, **kwargs: Any):
        @task(task_id=step, execution_timeout=STEP_TIMEOUTS[step], **kwargs)
        def _run(pipeline: Any) -> dict[str, Any] | None:
            return run_step(step, pipeline)

        _run.__doc__ = f"`hemo {step}` through the selected runner."
        return _run

    @task.branch(task_id="promoted", execution_timeout=STEP_TIMEOUTS["promoted"])
    def promoted(decision: Any) -> str:
        """Score only when the gate moved @champion; otherwise stop. The decision is the gate
        task's result, wherever the gate ran."""
        if not decision or "promoted" not in decision:
            raise RuntimeError("the gate task returned no decision")
        print(f"gate decision: {decision.get('reason')}")
        return "score" if decision["promoted"] else "not_promoted"

    @task(task_id="score", execution_timeout=STEP_TIMEOUTS["score"])
    def plan_scoring(decision: Any) -> list[list[str]]:
        """Scoring shards (param score_shards), each pinned to the champion version the gate left,
        so every shard scores with the same model whatever happens to the alias meanwhile."""
        from hemo_pipeline.orchestration import runners

        model = decision.get("champion_model_after")
        if not model:
            raise RuntimeError("the gate reported no champion version to score with")
        shards = int(get_current_context()["params"]["score_shards"])
        return [runners.shard_args(index, shards, model) for index in range(shards)]

    @task(task_id="score_shard", execution_timeout=STEP_TIMEOUTS["score_shard"])
    def score_shard(pipeline: Any, args: list[str]) -> dict[str, Any] | None:
        """`hemo score --shard I/N` (dynamic task mapping: one task instance per shard)."""
        return run_step("score", pipeline, extra=args)

    @task(task_id="merge_scores", execution_timeout=STEP_TIMEOUTS["merge_scores"])
    def merge_scores(pipeline: Any) -> dict[str, Any] | None:
        """`hemo merge-scores`: the shards joined into the files one unsharded run writes."""
        shards = str(int(get_current_context()["params"]["score_shards"]))
        return run_step("merge-scores", pipeline, extra=["--shards", shards])

    @task(task_id="report", execution_timeout=STEP_TIMEOUTS["report"])
    def report(pipeline: Any, merged: Any) -> dict[str, Any] | None:
        """`hemo report` on the worker for the merged scores (``merged``: merge_scores' result,
        so it runs only after them); skipped when the run turns it off or the site has not
        configured it. A partial configuration fails the task (no retry) with what is missing."""
        from airflow.sdk import Variable
        from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

        from hemo_pipeline.orchestration import runners

        context = get_current_context()
        if not context["params"]["report"]:
            raise AirflowSkipException("report is off for this run")
        config = {name: Variable.get(f"hemo_report_{name}", default=None) for name in runners.REPORT_VARIABLES}
        try:
            args = runners.report_args(config, runners.safe_run_key(context["run_id"]))
        except runners.ReportNotConfigured as exc:
            raise AirflowSkipException(str(exc)) from exc
        except ValueError as exc:
            raise AirflowFailException(str(exc)) from exc
        return run_step("report", pipeline, runner="local", extra=args)

    @task(task_id="not_promoted", execution_timeout=STEP_TIMEOUTS["not_promoted"])
    def not_promoted() -> None:
        """The champion is unchanged; nothing to score."""

    @task(task_id="end_run", trigger_rule="all_done", retries=3, execution_timeout=STEP_TIMEOUTS["end_run"])
    def end_run(pipeline: Any) -> None:
        """End the parent MLflow run: FAILED if any task of this DAG run failed, else FINISHED.
        ``pipeline`` is None when start_run itself failed: there is no run to end.

        end_run is the DAG's only leaf and runs whatever happened upstream (all_done), so Airflow
        would call the DAG run a success from its state alone: after ending the parent run FAILED it
        fails itself (no retry), so a run with a failed step never reads as a success in the UI,
        the REST API or `airflow dags test`."""
        from airflow.sdk.exceptions import AirflowFailException

        from hemo_pipeline.orchestration import runners

        ti = get_current_context()["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id])
        states = states.get(ti.run_id, states)  # {run_id: {task_id: state}}
        failed = [task_id for task_id, state in states.items()
                  if str(state) in ("failed", "upstream_failed") and task_id != "end_run"]
        reason = "failed tasks: " + ", ".join(sorted(failed))
        if not (pipeline or {}).get("run_id"):
            print("no parent run was created; nothing to end")
        else:
            status = "FAILED" if failed else "FINISHED"
            args = ["--status", status, "--run-id", pipeline["run_id"]]
            if failed:
                args += ["--reason", reason]
            # An MLflow API call: the worker's own `hemo` does it, whichever runner ran the steps.
            runners.run_local("end-run", _settings(pipeline["run_id"]), extra_args=args)
        if failed:
            raise AirflowFailException(f"the DAG run failed ({reason}); their logs say why")

    pipeline = start_run()
    ended = end_run(pipeline)
    synced = sync_data(pipeline)
    # validate also runs when sync_data was skipped (no remote), never after it failed.
    validated = step_task("validate", trigger_rule="none_failed", retries=0)(pipeline)
    trained = step_task("train")(pipeline)
    refined = step_task("refine")(pipeline)
    evaluated = step_task("evaluate")(pipeline)
    decision = step_task("gate")(pipeline)
    branch = promoted(decision)
    synced >> validated >> trained >> refined >> evaluated >> decision
    plan = plan_scoring(decision)
    shards = score_shard.partial(pipeline=pipeline).expand(args=plan)
    merged = merge_scores(pipeline)
    reported = report(pipeline, merged)
    declined = not_promoted()
    branch >> [plan, declined]
    shards >> merged
    [synced, validated, trained, refined, evaluated, decision, branch, plan, shards, merged, reported,
     declined] >> ended


hemo_retraining()
