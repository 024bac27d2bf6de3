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
from typing import Any

import torch

from hemo_model.training.history import EpochStats


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
        backend = "nccl" if device.type == "cuda" else "gloo"
        if timeout is None:
            dist.init_process_group(backend=backend)
        else:
            dist.init_process_group(backend=backend, timeout=timeout)


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


@dataclass
class DataParallel:
    """How one process takes part in a fit: the module it steps (DDP-wrapped under torchrun), the
    sampler of its share of the data, its batch size, and the factor of a summed loss."""

    model: torch.nn.Module
    sampler: Any
    batch_size: int | None
    loss_scale: float = 1.0


def data_parallel(model: torch.nn.Module, dataset: Any, batch_size: int | None, seed: int, cluster: Cluster,
                  device: torch.device, loss_reduction: str, shuffle: torch.Generator,
                  repeat_factors: Any = None) -> DataParallel:
    """The thin distributed wrapper of a fit. Alone: the model itself and a seeded random sampler.
    Under torchrun: DistributedDataParallel, a DistributedSampler of this rank's share, the global
    batch split evenly over the ranks, and a summed loss scaled so the averaged gradients equal the
    single-process ones. ``repeat_factors`` (one per item) replaces the uniform sampler by
    class-aware repeat-factor sampling (:class:`hemo_model.training.sampling.RepeatFactorSampler`),
    alone and under torchrun alike."""
    from torch.utils.data import RandomSampler

    from hemo_model.training.sampling import RepeatFactorSampler

    if not cluster.distributed:
        sampler: Any = (RandomSampler(dataset, generator=shuffle) if repeat_factors is None
                        else RepeatFactorSampler(repeat_factors, seed=seed))
        return DataParallel(model, sampler, batch_size)
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.data import DistributedSampler

    if batch_size is None or batch_size % cluster.world_size:
        raise ValueError(f"batch size {batch_size} is not divisible by {cluster.world_size} processes")
    if repeat_factors is None:
        sampler = DistributedSampler(dataset, num_replicas=cluster.world_size, rank=cluster.rank, shuffle=True,
                                     seed=seed, drop_last=True)
    else:
        sampler = RepeatFactorSampler(repeat_factors, seed=seed, num_replicas=cluster.world_size, rank=cluster.rank)
    wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    scale = float(cluster.world_size) if loss_reduction == "sum" else 1.0  # DDP averages gradients
    return DataParallel(wrapped, sampler, batch_size // cluster.world_size, scale)


def reduce_epoch(stats: EpochStats, cluster: Cluster, device: torch.device, loss_scale: float) -> EpochStats:
    """The epoch's figures over all ranks (a summed loss: the ranks' shares of each global batch add up)."""
    if not cluster.distributed:
        return stats
    steps = int(all_reduce_sum(stats.steps, cluster, device))
    if loss_scale != 1.0:
        steps //= cluster.world_size
    return EpochStats(all_reduce_sum(stats.loss_sum, cluster, device), steps,
                      int(all_reduce_sum(stats.seen, cluster, device)), stats.seconds)
