"""Start a pipeline run: create the parent MLflow run that every step's run nests under.

Orchestrators call this first (the Airflow DAG does; `hemo train` does it itself under DVC)
and pass the printed run id to later steps as HEMO_PARENT_RUN_ID. Also writes
outputs/pipeline_run.json in the working folder. Prints the run id as the last line.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from components.model_steps import add_settings_arguments

    add_settings_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from components import tracking
    from components.model_steps import settings_from
    from components.results import publish

    settings = settings_from(args)
    tracking.configure()
    run_id = tracking.start_pipeline_run(settings)
    publish("start-run", {"run_id": run_id})
    print(run_id)
    return 0
