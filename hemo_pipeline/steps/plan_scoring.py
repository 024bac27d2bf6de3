"""Plan a sharded `hemo score`: the shards of the scoring folder and the one model version they all use.

An orchestrator that fans scoring out (a Kubeflow parallel-for, a batch array job) needs the
list to iterate over before anything is scored, and every shard must score with the same
model: were each shard to resolve ``@champion`` itself, a promotion while they run would merge
predictions of two models. So the plan resolves the model once, to a version, checks that the
folder holds at least one patient per shard (an empty shard is a wasted GPU pod and a failed
merge), and publishes

    {"shards": [{"index": 0, "count": N, "model": "models:/hemorrhage-classifier/V"}, ...],
     "shard_count": N, "model": "models:/hemorrhage-classifier/V", "model_version": "V", ...}

Each item of ``shards`` is everything one shard task needs, so a parallel-for over it hands each
iteration its own complete work order: ``hemo score --shard <index>/<count> --model <model>``;
``hemo merge-scores --shards N`` then joins them. The Airflow DAG plans the same way in its own
task (dynamic task mapping needs the argument lists in the worker); both build a shard's
arguments with :func:`hemo_pipeline.orchestration.runners.shard_args`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hemo_model.data.layout import DataError
from hemo_model.data.patients import load_folder
from hemo_pipeline.services import registry
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.registry import MODEL_NAME, version_uri
from hemo_pipeline.services.results import publish
from hemo_pipeline.services.score_files import DEFAULT_MODEL
from hemo_pipeline.services.settings import load_settings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data/test"),
                        help="the folder `hemo score` will score (ID_<hash>/ patient folders)")
    parser.add_argument("--shards", type=int, required=True, help="N, how many shards to score in parallel")
    parser.add_argument("--model", default=None,
                        help="a version number, models:/hemorrhage-classifier/<version> or models:/...@<alias> "
                             "(resolved once; default @champion)")


def model_uri(model: str | None) -> str:
    """The registry URI ``--model`` names; a bare version number is a version of this project's model."""
    if model is None or not model.strip():
        return DEFAULT_MODEL
    model = model.strip()
    if model.isascii() and model.isdigit():
        return version_uri(model)
    if not model.startswith("models:/"):
        raise UserError(f"--model {model!r}: give a version number, models:/{MODEL_NAME}/<version> or "
                        f"models:/{MODEL_NAME}@<alias> (shards score registered versions only)")
    return model


def run(args: argparse.Namespace) -> int:
    if args.shards < 1:
        raise UserError(f"--shards {args.shards}: give at least 1")
    try:  # the folder `hemo score` reads, under the same guard (data/test linked out is refused)
        patients = load_folder(args.data, data_root=Path(load_settings().data.root))
    except DataError as exc:
        raise UserError(str(exc)) from exc
    if args.shards > len(patients):
        raise UserError(f"--shards {args.shards}: {args.data} holds {len(patients)} patient(s), so "
                        f"{args.shards - len(patients)} shard(s) would be empty; use at most {len(patients)}")
    uri, version = registry.resolve(model_uri(args.model))
    if version is None:  # model_uri() gives models:/ URIs only, and resolve() a version for each
        raise UserError(f"--model {args.model!r} names no registered version")
    registry.require_version(version)  # a version that does not exist fails here, before N pods start
    shards = [{"index": index, "count": args.shards, "model": uri} for index in range(args.shards)]
    publish("plan-scoring", {"shards": shards, "shard_count": args.shards, "model": uri,
                             "model_version": version, "patients": len(patients), "data": str(args.data)})
    print(f"plan-scoring: {len(patients)} patients of {args.data} in {args.shards} shard(s), "
          f"each scored with {uri}")
    return 0
