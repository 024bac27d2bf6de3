"""Data-parallel training under `torchrun` (one process per GPU, or per CPU with gloo).

`hemo train` and `hemo refine` run unchanged under ``torchrun --nproc_per_node N`` (and multi-node):
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK, :func:`from_environment` reads them, the process group
is NCCL on GPUs and gloo on CPUs. The global batch stays the method's (each rank takes its share),
gradients are averaged by DDP, each rank draws its own augmentation, and rank 0 alone validates,
logs and writes checkpoints; every rank resumes from rank 0's last.pt when the group is started
again after a worker died (the runners leave that to the orchestrator's retry, `--max-restarts 0`:
on the CPU a group restarted in place by torchrun's agent was seen to hang in gloo's connect).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


@dataclass(frozen=True)
class Cluster:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Cluster()


def from_environment() -> Cluster:
    """The process's place in a torchrun job (a single process when not launched by torchrun)."""
    return Cluster(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)))


TIMEOUT_ENV = "HEMO_DIST_TIMEOUT_S"
"""Seconds a rank waits for the others (joining the group, any collective) before it fails."""


def group_timeout() -> timedelta | None:
    """The process group's timeout from HEMO_DIST_TIMEOUT_S; None keeps torch's default (10 min
    for NCCL, 30 min for gloo). A shorter one makes a rank whose peers never join the rendezvous,
    or never reach a collective, fail (and its task be retried) instead of waiting half an hour; it
    must exceed the longest time a rank can wait for rank 0 (validation, checkpoint and MLflow
    logging between two collectives). Seen not to bound: gloo's pair connect of a group that
    torchrun's agent restarted in place (why the runners use ``--max-restarts 0``)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ValueError(f"{TIMEOUT_ENV}={text!r}: give a number of seconds above 0, or unset it for torch's default")
    return timedelta(seconds=seconds)


def init(cluster: Cluster, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on the CPU) once per process."""
    import torch.distributed as dist

    if cluster.distributed and not dist.is_initialized():
        timeout = group_timeout()
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                **({"timeout": timeout} if timeout else {}))


def local_device(cluster: Cluster, device: torch.device) -> torch.device:
    """This rank's GPU (cuda:LOCAL_RANK) when running on CUDA, else ``device``."""
    if device.type == "cuda" and cluster.distributed:
        return torch.device("cuda", cluster.local_rank)
    return device


def all_reduce_sum(value: float, cluster: Cluster, device: torch.device) -> float:
    if not cluster.distributed:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item())


def barrier(cluster: Cluster) -> None:
    if cluster.distributed:
        import torch.distributed as dist

        dist.barrier()
