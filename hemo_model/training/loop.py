"""The fit loop shared by stage 1 (single slices), stage 2 (5-slice refinement) and learned
context heads, in the shape of torchvision's ``references/classification``: one function trains
one epoch, :func:`fit` runs the epochs, validates, selects and checkpoints.

Adam + StepLR as in the method. Per-epoch seeding (seed + epoch, per rank) of the shuffle, the
augmentation and dropout makes a run deterministic on the CPU and a resumed run identical to an
uninterrupted one. Under torchrun every rank trains its share (:mod:`hemo_model.training.distributed`)
and rank 0 alone validates, selects, checkpoints and reports: that work is in one place,
:func:`_finish_epoch`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from hemo_model.data.transforms import METHOD_AUGMENTATION, Augmentation, to_model_input
from hemo_model.inference.precision import autocast
from hemo_model.training.checkpointer import Checkpointer
from hemo_model.training.config import FitConfig
from hemo_model.training.distributed import SINGLE, Cluster, data_parallel, reduce_epoch
from hemo_model.training.history import EpochRecord, EpochStats, FitResult, selected_epoch

AUGMENTATION_SEED_OFFSET = 7919
"""A separate random stream for the augmentation, apart from the shuffle's."""
RANK_SEED_STRIDE = 100003
"""Each torchrun rank draws its own augmentation and dropout."""

Prepare = Callable[[torch.Tensor, torch.device, torch.Generator], torch.Tensor]
"""Turns a batch as the loader gives it into model input on the device (with the augmentation draws)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def image_input(augmentation: Augmentation | None) -> Prepare:
    """uint8 slices -> normalised, augmented model input on the device (:func:`to_model_input`)."""

    def prepare(batch: torch.Tensor, device: torch.device, draws: torch.Generator) -> torch.Tensor:
        return to_model_input(batch, device, augmentation, draws)

    return prepare


def tensor_input(batch: torch.Tensor, device: torch.device, draws: torch.Generator) -> torch.Tensor:
    """Inputs that are already model input (e.g. frozen embeddings): moved to the device only."""
    return batch.to(device, non_blocking=True)


def train_one_epoch(model: nn.Module, loader: Any, loss_fn: nn.Module, optimizer: torch.optim.Optimizer,
                    prepare: Prepare, draws: torch.Generator, device: torch.device, precision: str,
                    max_steps: int | None = None, loss_scale: float = 1.0, progress: str | None = None) -> EpochStats:
    """One pass over ``loader`` (at most ``max_steps`` optimizer steps). ``progress`` names a bar
    shown on terminals only (task logs get the per-epoch line of :func:`fit`)."""
    model.train()
    started, seen, total_loss, steps = time.perf_counter(), 0, 0.0, 0
    batches = loader
    if progress:
        from tqdm import tqdm

        batches = tqdm(loader, desc=progress, unit="batch", leave=False, disable=None)
    for inputs, targets in batches:
        if max_steps is not None and steps >= max_steps:
            break
        inputs = prepare(inputs, device, draws)
        targets = targets.to(device, non_blocking=True)
        with autocast(device, precision):
            logits = model(inputs)
        loss = loss_fn(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        (loss * loss_scale if loss_scale != 1.0 else loss).backward()
        optimizer.step()
        seen += inputs.shape[0]
        total_loss += float(loss.detach())
        steps += 1
        if progress:
            rate = seen / max(time.perf_counter() - started, 1e-9)
            batches.set_postfix(loss=f"{total_loss / steps:.4f}", samples_s=f"{rate:.1f}")
    return EpochStats(total_loss, steps, seen, time.perf_counter() - started)


def fit(
    model: nn.Module,
    dataset: Dataset,
    validate: Callable[[nn.Module], float],
    loss_fn: nn.Module,
    config: FitConfig,
    checkpoints: Checkpointer | None = None,
    *,
    resume_from: dict[str, Any] | None = None,
    save_model: nn.Module | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    augmentation: Augmentation | None = METHOD_AUGMENTATION,
    prepare: Prepare | None = None,
    cluster: Cluster = SINGLE,
    validate_initial: bool = False,
) -> FitResult:
    """Train ``model`` on ``dataset`` for ``config.epochs`` and keep the epoch ``config.selection``
    picks by ``validate(model)``.

    ``save_model`` is the module whose weights are kept and checkpointed (the per-slice network
    when ``model`` is a context wrapper around it). ``checkpoints`` (None: nothing written) gets
    best.pt and last.pt every epoch; ``resume_from`` is a last.pt payload to continue from (read
    once by the caller, :func:`hemo_model.training.checkpointer.read_last`). Batches become model
    input through ``prepare`` (default: uint8 slices with ``augmentation``, on the device).
    ``validate_initial`` measures the starting weights first (``FitResult.initial_val_micro_f2``).
    """
    device = device or torch.device("cpu")
    save_model = save_model or model
    model.to(device)
    model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    result, start_epoch = FitResult(best_epoch=-1, best_val_micro_f2=-1.0), 1
    initial = float(validate(model)) if validate_initial and cluster.is_main else None  # the starting weights
    if resume_from is not None:
        if checkpoints is None:
            raise ValueError("resuming needs the checkpointer that wrote the checkpoint")
        start_epoch, result = checkpoints.restore(resume_from, save_model, optimizer, scheduler)
    result.initial_val_micro_f2 = initial
    shuffle, draws = torch.Generator(), torch.Generator()
    parallel = data_parallel(model, dataset, config.batch_size, config.seed, cluster, device,
                             getattr(loss_fn, "reduction", "mean"), shuffle, _repeat_factors(dataset, config))
    loader = DataLoader(  # created once: workers persist across epochs, the sampler is reseeded per epoch
        dataset, batch_size=parallel.batch_size, sampler=parallel.sampler,
        drop_last=config.batch_size is not None and len(dataset) > config.batch_size,  # type: ignore[arg-type]
        num_workers=config.workers, pin_memory=device.type == "cuda", persistent_workers=config.workers > 0,
        prefetch_factor=4 if config.workers > 0 else None)
    prepare = prepare or image_input(augmentation)

    for epoch in range(start_epoch, config.epochs + 1):
        seed_everything(config.seed + epoch + RANK_SEED_STRIDE * cluster.rank)
        shuffle.manual_seed(config.seed + epoch)
        if hasattr(parallel.sampler, "set_epoch"):  # DistributedSampler, RepeatFactorSampler
            parallel.sampler.set_epoch(epoch)
        draws.manual_seed(AUGMENTATION_SEED_OFFSET + config.seed + epoch + RANK_SEED_STRIDE * cluster.rank)
        stats = train_one_epoch(parallel.model, loader, loss_fn, optimizer, prepare, draws, device, config.precision,
                                config.max_steps, parallel.loss_scale,
                                progress=f"epoch {epoch}/{config.epochs}" if progress else None)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        stats = reduce_epoch(stats, cluster, device, parallel.loss_scale)
        if cluster.is_main:
            _finish_epoch(epoch, stats, lr, model, save_model, validate, config, result, checkpoints, optimizer,
                          scheduler, on_epoch, progress)
    return result


def _repeat_factors(dataset: Dataset, config: FitConfig) -> Any:
    """Per-item repeat factors when the config asks for class-aware sampling, else None."""
    from hemo_model.training.sampling import SAMPLING_RULES, repeat_factors

    if config.sampling not in SAMPLING_RULES:
        raise ValueError(f"unknown sampling {config.sampling!r}; use " + " or ".join(map(repr, SAMPLING_RULES)))
    if config.sampling == "uniform":
        return None
    if not hasattr(dataset, "item_labels"):
        raise ValueError("repeat_factor sampling needs a dataset with item_labels() (slices or windows)")
    labels = dataset.item_labels()
    if len(labels) != len(dataset):  # type: ignore[arg-type]
        raise ValueError(f"item_labels() gave {len(labels)} rows for a dataset of {len(dataset)} items")  # type: ignore[arg-type]
    return repeat_factors(labels, config.repeat_threshold)


def _finish_epoch(epoch: int, stats: EpochStats, lr: float, model: nn.Module, save_model: nn.Module,
                  validate: Callable[[nn.Module], float], config: FitConfig, result: FitResult,
                  checkpoints: Checkpointer | None, optimizer: torch.optim.Optimizer, scheduler: Any,
                  on_epoch: Callable[[EpochRecord], None] | None, progress: bool) -> None:
    """Rank 0's work after an epoch: validate, record, select, checkpoint, report."""
    val_f2 = float(validate(model))
    record = EpochRecord(epoch, stats.mean_loss, val_f2, lr, stats.seconds, stats.samples_per_s)
    result.history.append(record)
    if selected_epoch(result.history, config.selection, config.ema_alpha) == epoch:
        result.best_epoch, result.best_val_micro_f2 = epoch, val_f2
        result.best_state = Checkpointer.snapshot(save_model)
        if checkpoints is not None:
            checkpoints.save_best(save_model, epoch, val_f2)
    if checkpoints is not None:
        checkpoints.save_last(save_model, optimizer, scheduler, epoch, result)
    if on_epoch is not None:
        on_epoch(record)
    if progress:
        print(f"epoch {epoch}: loss {record.train_loss:.4f}, val micro-F2 {val_f2:.4f}, "
              f"{record.samples_per_s:.1f} samples/s, lr {lr:.2e}")
