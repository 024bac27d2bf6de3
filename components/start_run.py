"""Start a pipeline run: create the parent MLflow run that every step's run nests under.

Orchestrators call this first (the Airflow DAG does; `hemo train` does it itself under DVC)
and pass the printed run id to later steps as HEMO_PARENT_RUN_ID. Also writes
outputs/pipeline_run.json in the working folder. Prints the run id as the last line.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", type=Path, help="params file (default: ./params.yaml if present)")


def run(args: argparse.Namespace) -> int:
    from components import tracking
    from components.params import load_params

    params = load_params(args.params)
    tracking.configure()
    run_id = tracking.start_pipeline_run(params)
    print(run_id)
    return 0
