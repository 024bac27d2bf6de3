"""End the pipeline's parent MLflow run: the last step of every pipeline calls this.

FINISHED after the last step succeeded, FAILED when an orchestrator saw a step fail (the Airflow
DAG's final task runs whatever happened upstream). The run is HEMO_PARENT_RUN_ID, --run-id, or
the one `hemo train` recorded in outputs/pipeline_run.json. A run that already ended is left as it
is. (A pipeline that dies without reaching this step has its parent ended FAILED by the next
`hemo train`.)

Kubeflow's exit handler cannot choose an argument by the pipeline's outcome; it hands its final
status over as a document instead (``PipelineTaskFinalStatus``: ``{"state": "SUCCEEDED" | "FAILED"
| ..., "error": {"message": ...}}``). ``--final-status`` takes that document, so the pipeline passes
it through unread: SUCCEEDED ends the run FINISHED, any other state FAILED with the error as reason.
"""

from __future__ import annotations

import argparse
import json

from hemo_pipeline.services import tracking
from hemo_pipeline.services.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--status", choices=["FINISHED", "FAILED"], default="FINISHED")
    parser.add_argument("--run-id", help="the parent run (default: HEMO_PARENT_RUN_ID or outputs/pipeline_run.json)")
    parser.add_argument("--reason", help="kept on the run as hemo.end_reason")
    parser.add_argument("--final-status", metavar="JSON",
                        help="an orchestrator's final-status document ({\"state\": ..., \"error\": {\"message\": ...}}, "
                             "as a Kubeflow exit handler passes it): SUCCEEDED -> FINISHED, else FAILED; "
                             "replaces --status")


def status_from(document: str) -> tuple[str, str | None]:
    """(FINISHED | FAILED, reason) from a final-status document; a malformed one is a user error."""

    try:
        final = json.loads(document)
        state = str(final["state"]).upper()
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"--final-status {document[:200]!r}: expected a JSON object with a 'state' "
                        f"(e.g. {{\"state\": \"SUCCEEDED\"}})") from exc
    if state == "SUCCEEDED":
        return "FINISHED", None
    error = final.get("error") or {}
    message = error.get("message") if isinstance(error, dict) else str(error)
    task = final.get("pipelineTaskName") or final.get("pipeline_task_name")
    return "FAILED", f"pipeline {state.lower()}" + (f" ({task})" if task else "") + (f": {message}" if message else "")


def run(args: argparse.Namespace) -> int:
    if args.final_status is not None:
        args.status, reason = status_from(args.final_status)
        args.reason = args.reason or reason
    tracking.configure()
    run_id = args.run_id or tracking.parent_run_id()
    if not run_id:
        raise UserError(f"no pipeline run to end: pass --run-id, set HEMO_PARENT_RUN_ID, or run `hemo train` first "
                        f"(it records the run in {tracking.PIPELINE_RUN_FILE})")
    status = tracking.run_status(run_id)
    if status is None:
        raise UserError(f"run {run_id} does not exist at {tracking.tracking_uri()}")
    ended = tracking.end_run(run_id, args.status, args.reason)
    print(f"end-run: pipeline run {run_id} " + (f"ended {args.status}" if ended else f"was already {status}"))
    return 0
