"""Start a pipeline run: create the parent MLflow run that every step's run nests under.

Orchestrators call this first (the Airflow DAG does; `hemo train` does it itself under DVC)
and pass the printed run id to later steps as HEMO_PARENT_RUN_ID. Also writes
outputs/pipeline_run.json in the working folder. Prints the run id as the last line.
"""

from __future__ import annotations

import argparse

from hemo_pipeline.services import tracking
from hemo_pipeline.services.results import publish
from hemo_pipeline.services.step_args import add_settings_arguments, settings_from


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    settings = settings_from(args)
    tracking.configure()
    run_id = tracking.start_pipeline_run(settings)
    publish("start-run", {"run_id": run_id})
    print(run_id)
    return 0
