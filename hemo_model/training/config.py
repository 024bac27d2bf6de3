"""What a fit needs to know besides the model and the data."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FitConfig:
    """One fit's schedule and budget (Adam + StepLR as in the method)."""

    epochs: int = 20
    batch_size: int | None = 20
    """The global batch (under torchrun each rank takes its share); None: one dataset item per step
    (a learned context head trains on one whole sequence at a time)."""
    lr: float = 1e-4
    weight_decay: float = 1e-4
    step_size: int = 10
    gamma: float = 0.5
    precision: str = "fp32"
    seed: int = 0
    workers: int = 0
    max_steps: int | None = None
    """Cap on optimizer steps per epoch (smoke runs, the CPU demo's partial refinement); None = full."""
    selection: str = "best"
    """Which epoch is kept as best: best | last | ema (see :func:`hemo_model.training.history.selected_epoch`)."""
    ema_alpha: float = 0.5
    sampling: str = "uniform"
    """Which slices an epoch draws: uniform (the method) or repeat_factor (class-aware, see
    :mod:`hemo_model.training.sampling`; needs a dataset with ``item_labels()``)."""
    repeat_threshold: float = 0.2
    """repeat_factor: classes on fewer than this fraction of slices are repeated by sqrt(t / f)."""
