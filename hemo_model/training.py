"""The fit loop shared by stage 1 (single slices) and stage 2 (5-slice context refinement).

Adam + StepLR as in the method. Which epoch moves on is a selection rule: ``best`` (the
method: highest validation micro-F2), ``last``, or ``ema`` (highest exponential moving average of
validation micro-F2, which a single lucky epoch on a small validation set cannot win). The selected
epoch's weights are kept as ``best.pt``. A checkpoint
with model, optimizer, scheduler, RNG states and history is written atomically after every
epoch, so an interrupted run continues from the last finished epoch with ``resume=True``.
Per-epoch seeding (seed + epoch) of the shuffle and the augmentation makes a run deterministic
on the CPU, and a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, RandomSampler

from hemo_model.inference import autocast
from hemo_model.model import save_checkpoint
from hemo_model.spec import ModelSpec
from hemo_model.distributed import SINGLE, Cluster, all_reduce_sum
from hemo_model.transforms import METHOD_AUGMENTATION, Augmentation, to_model_input

AUGMENTATION_SEED_OFFSET = 7919  # a separate stream from the shuffle's
RANK_SEED_STRIDE = 100003  # each torchrun rank draws its own augmentation and dropout
LAST = "last.pt"
BEST = "best.pt"


@dataclass
class FitConfig:
    epochs: int = 20
    batch_size: int = 20
    lr: float = 1e-4
    weight_decay: float = 1e-4
    step_size: int = 10
    gamma: float = 0.5
    precision: str = "fp32"
    seed: int = 0
    workers: int = 0
    max_steps: int | None = None  # cap on optimizer steps per epoch (smoke tests); None = full epoch
    selection: str = "best"  # which epoch is kept as best.pt: best | last | ema (see selected_epoch)
    ema_alpha: float = 0.5


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    val_micro_f2: float
    lr: float
    seconds: float
    samples_per_s: float


@dataclass
class FitResult:
    best_epoch: int
    best_val_micro_f2: float
    history: list[EpochRecord] = field(default_factory=list)
    best_state: dict[str, torch.Tensor] | None = None


SELECTION_RULES = ("best", "last", "ema")


def selected_epoch(history: list[EpochRecord], rule: str, ema_alpha: float = 0.5) -> int:
    """The epoch ``rule`` keeps, from the history so far. Online: a later epoch can only replace
    the choice, never revive an earlier one, so best.pt can be written as training goes."""
    if not history:
        raise ValueError("no epoch to select from")
    if rule == "last":
        return history[-1].epoch
    if rule == "best":
        values = [h.val_micro_f2 for h in history]
    elif rule == "ema":
        values, smoothed = [], None
        for h in history:
            smoothed = h.val_micro_f2 if smoothed is None else ema_alpha * h.val_micro_f2 + (1 - ema_alpha) * smoothed
            values.append(smoothed)
    else:
        raise ValueError(f"unknown selection rule {rule!r}; use one of {SELECTION_RULES}")
    return history[values.index(max(values))].epoch  # the first epoch reaching the maximum


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])


def fit(
    model: nn.Module,
    dataset: Dataset,
    validate: Callable[[nn.Module], float],
    loss_fn: nn.Module,
    config: FitConfig,
    checkpoint_dir: Path,
    model_spec: ModelSpec,
    save_model: nn.Module | None = None,
    resume: bool = False,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    checkpoint_extra: dict[str, Any] | None = None,
    augmentation: Augmentation | None = METHOD_AUGMENTATION,
    cluster: Cluster = SINGLE,
) -> FitResult:
    """Train ``model`` on ``dataset`` and keep the epoch with the best ``validate(model)``.

    ``save_model`` is the module whose weights are checkpointed (the per-slice network when
    ``model`` is a context wrapper around it), so every checkpoint loads as a plain HemoNet.
    ``checkpoint_extra`` (e.g. the training patients' provenance) is stored in every checkpoint.
    Batches arrive as uint8 and become model input on the device (:func:`to_model_input`), with
    ``augmentation`` drawn from a per-epoch seeded generator.

    Under torchrun (``cluster.distributed``) the model is wrapped in DistributedDataParallel, each
    rank trains on its share of every global batch (``config.batch_size`` stays the global batch;
    a summed loss is scaled so the averaged gradients equal the single-process ones), draws its own
    augmentation, and rank 0 alone validates, calls ``on_epoch`` and writes checkpoints.
    """
    extra = dict(checkpoint_extra or {})
    device = device or torch.device("cpu")
    save_model = save_model or model
    model.to(device=device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    result = FitResult(best_epoch=-1, best_val_micro_f2=-1.0)
    start_epoch = 1
    last_path = checkpoint_dir / LAST
    if resume and last_path.is_file():
        state = torch.load(last_path, map_location="cpu", weights_only=True)
        save_model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer_state"])
        scheduler.load_state_dict(state["scheduler_state"])
        _set_rng_state(state["rng"])
        start_epoch = int(state["epoch"]) + 1
        result.best_epoch = int(state["best_epoch"])
        result.best_val_micro_f2 = float(state["best_val_micro_f2"])
        result.history = [EpochRecord(**h) for h in state["history"]]
        best_file = checkpoint_dir / BEST
        if best_file.is_file():
            result.best_state = torch.load(best_file, map_location="cpu", weights_only=True)["model_state"]
    shuffle, draws = torch.Generator(), torch.Generator()
    workers = config.workers
    trained, batch_size, loss_scale = model, config.batch_size, 1.0
    sampler: Any = RandomSampler(dataset, generator=shuffle)
    if cluster.distributed:
        from torch.nn.parallel import DistributedDataParallel
        from torch.utils.data import DistributedSampler

        if config.batch_size % cluster.world_size:
            raise ValueError(f"batch size {config.batch_size} is not divisible by {cluster.world_size} processes")
        batch_size = config.batch_size // cluster.world_size
        sampler = DistributedSampler(dataset, num_replicas=cluster.world_size, rank=cluster.rank, shuffle=True,
                                     seed=config.seed, drop_last=True)
        trained = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if getattr(loss_fn, "reduction", "mean") == "sum":
            loss_scale = float(cluster.world_size)  # DDP averages gradients; a summed loss must not shrink
    loader = DataLoader(  # created once: workers persist across epochs, the sampler is reseeded per epoch
        dataset, batch_size=batch_size, sampler=sampler,
        drop_last=len(dataset) > config.batch_size, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None)

    for epoch in range(start_epoch, config.epochs + 1):
        # Seed shuffle and augmentation per epoch (and per rank): reproducible, identical after a resume.
        seed_everything(config.seed + epoch + RANK_SEED_STRIDE * cluster.rank)
        shuffle.manual_seed(config.seed + epoch)
        if cluster.distributed:
            sampler.set_epoch(epoch)
        draws.manual_seed(AUGMENTATION_SEED_OFFSET + config.seed + epoch + RANK_SEED_STRIDE * cluster.rank)
        model.train()
        started, seen, total_loss, steps = time.perf_counter(), 0, 0.0, 0
        batches = loader
        if progress:
            from tqdm import tqdm

            batches = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", unit="batch", leave=False,
                           disable=None)  # a bar on a terminal; task logs get the per-epoch line below
        for inputs, targets in batches:
            if config.max_steps is not None and steps >= config.max_steps:
                break
            inputs = to_model_input(inputs, device, augmentation, draws)
            targets = targets.to(device, non_blocking=True)
            with autocast(device, config.precision):
                logits = trained(inputs)
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
        train_seconds = time.perf_counter() - started
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if cluster.distributed:  # the epoch's loss over all ranks; only rank 0 goes on to validate and save
            total_loss = all_reduce_sum(total_loss, cluster, device)
            steps = int(all_reduce_sum(steps, cluster, device))
            seen = int(all_reduce_sum(seen, cluster, device))
            if loss_scale != 1.0:
                steps //= cluster.world_size  # a summed loss: add the ranks' shares of each global batch
            if not cluster.is_main:
                continue
        val_f2 = float(validate(model))
        record = EpochRecord(epoch, total_loss / max(steps, 1), val_f2, lr, train_seconds, seen / max(train_seconds, 1e-9))
        result.history.append(record)
        if selected_epoch(result.history, config.selection, config.ema_alpha) == epoch:
            result.best_epoch, result.best_val_micro_f2 = epoch, val_f2
            result.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in save_model.state_dict().items()})
            save_checkpoint(checkpoint_dir / BEST, save_model, model_spec, epoch=epoch, val_micro_f2=val_f2,
                            **extra)
        save_checkpoint(
            last_path, save_model, model_spec,
            optimizer_state=optimizer.state_dict(), scheduler_state=scheduler.state_dict(), rng=_rng_state(),
            epoch=epoch, best_epoch=result.best_epoch, best_val_micro_f2=result.best_val_micro_f2,
            history=[asdict(h) for h in result.history], **extra,
        )
        if on_epoch is not None:
            on_epoch(record)
        if progress:
            print(f"epoch {epoch}: loss {record.train_loss:.4f}, val micro-F2 {val_f2:.4f}, "
                  f"{record.samples_per_s:.1f} samples/s, lr {lr:.2e}")
    return result
