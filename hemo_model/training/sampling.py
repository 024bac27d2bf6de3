"""Class-aware sampling: repeat-factor sampling (Gupta et al., LVIS, CVPR 2019), as detectron2's
``RepeatFactorTrainingSampler`` does it, for multi-label slices.

Why: on a team's first data set the rarest type (EDH: about 4 % of slices, a handful of patients)
is seen so seldom that ASL's focusing alone leaves it at F2 0 (issue 19). Repeat-factor sampling
shows slices of rare classes more often without touching the loss:

* ``f_c`` = fraction of training slices positive for class c;
* class repeat factor ``r_c = max(1, sqrt(t / f_c))`` for a threshold ``t`` (classes more frequent
  than ``t`` are not repeated);
* slice repeat factor ``r_i = max(r_c for the classes positive on slice i)``, 1 for a slice with
  none.

Each epoch, every slice is repeated ``floor(r_i)`` times plus once more with probability
``frac(r_i)`` (stochastic rounding), the list is shuffled and cut to the dataset's length, so an
epoch keeps the same number of optimizer steps as uniform sampling (the budget is the method's;
only the mix changes). Draws come from ``seed + epoch``: a resumed run and every torchrun rank see
the same global order, each rank taking every ``world_size``-th index of it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

SAMPLING_RULES = ("uniform", "repeat_factor")


def repeat_factors(labels: np.ndarray, threshold: float) -> np.ndarray:
    """Per-slice repeat factors of ``labels`` (slices x classes, 0/1) for threshold ``t``.

    A class with no positive slice has nothing to repeat (factor 1); NaN labels (unlabelled) count
    as negative."""
    if not 0 < threshold < math.inf:
        raise ValueError(f"repeat threshold must be a finite number above 0, got {threshold}")
    positive = np.nan_to_num(np.asarray(labels, dtype=np.float64)) > 0.5
    if positive.ndim != 2:
        raise ValueError(f"labels must be slices x classes, got shape {positive.shape}")
    frequency = positive.mean(axis=0) if len(positive) else np.zeros(positive.shape[1])
    per_class = np.where(frequency > 0, np.sqrt(threshold / np.where(frequency > 0, frequency, 1.0)), 1.0)
    per_class = np.maximum(per_class, 1.0)
    return np.where(positive, per_class[None, :], 1.0).max(axis=1, initial=1.0)


class RepeatFactorSampler(Sampler[int]):
    """Indices by repeat factor, the same length as uniform sampling; ``set_epoch`` before each
    epoch (the loop does). Under torchrun each rank yields its share of one global order."""

    def __init__(self, factors: np.ndarray, seed: int = 0, num_replicas: int = 1, rank: int = 0) -> None:
        factors = np.asarray(factors, dtype=np.float64)
        if factors.ndim != 1 or not (np.isfinite(factors) & (factors >= 1.0)).all():
            raise ValueError("repeat factors must be a 1-D array of finite values >= 1")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in 0..{num_replicas - 1}")
        self.whole = torch.from_numpy(np.floor(factors)).long()
        self.fraction = torch.from_numpy(factors - np.floor(factors))
        self.seed, self.num_replicas, self.rank, self.epoch = seed, num_replicas, rank, 0
        self.total = len(factors) - len(factors) % num_replicas  # every rank the same number of steps

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_order(self) -> torch.Tensor:
        """This epoch's indices for all ranks together (``total`` of them)."""
        draws = torch.Generator().manual_seed(self.seed + self.epoch)
        repeats = self.whole + (torch.rand(len(self.whole), generator=draws, dtype=torch.float64)
                                < self.fraction).long()
        expanded = torch.repeat_interleave(torch.arange(len(self.whole)), repeats)
        return expanded[torch.randperm(len(expanded), generator=draws)][: self.total]

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_order()[self.rank::self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.total // self.num_replicas


def expected_share(factors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Expected fraction of an epoch's draws positive for each class (what the sampler changes:
    printed by `hemo train` next to the data's own fraction)."""
    positive = np.nan_to_num(np.asarray(labels, dtype=np.float64)) > 0.5
    weights = np.asarray(factors, dtype=np.float64)
    return (positive * weights[:, None]).sum(axis=0) / max(weights.sum(), math.ulp(1.0))
