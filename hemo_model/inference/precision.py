"""Numeric precision on the device: fp32, or bf16 autocast; and a network made ready to score.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_for_inference(model: nn.Module, device: torch.device) -> nn.Module:
    """Move to ``device`` in channels_last and eval mode. Exported (pt2) programs are already
    captured in eval mode and refuse ``.eval()``, so that call is skipped for them."""
    model = model.to(device)
    model = model.to(memory_format=torch.channels_last)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        model.eval()
    return model
