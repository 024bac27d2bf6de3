"""Where a step runs: the device it asked for, and its place in a torchrun job.
"""

from __future__ import annotations

from typing import Any

import torch

from hemo_model.training import distributed
from hemo_pipeline.services.errors import UserError


def resolve_device(choice: str) -> Any:
    if choice == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was requested but no CUDA GPU is visible; use --device cpu or auto")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def join_cluster(device_choice: str) -> tuple[Any, Any]:
    """(cluster, device) of this process: under torchrun one process per GPU joins the process
    group (rank 0 logs and saves); alone, a cluster of one. A bad HEMO_DIST_TIMEOUT_S is a user error."""
    cluster = distributed.from_environment()
    device = distributed.local_device(cluster, resolve_device(device_choice))
    try:
        distributed.init(cluster, device)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    return cluster, device
