"""A data set whose labels are written into the images, and a fixed network that reads them.

The gate's decisions depend on how good a model is. Training models of known quality takes CPU
minutes; instead, each slice carries one 8x8 block per class along its top edge, white where the
class is positive. :class:`MarkerNet` reads those blocks, so its quality per class is set exactly:
``"read"`` (perfect), ``"positive"`` (flags every slice), ``"negative"`` (flags none). It is a
real ``nn.Module`` that goes through the real registry (safetensors + spec), loading and scoring
path: :func:`marker_architecture` registers it as the spec architecture ``markers`` (the extension
point a team uses for a network of its own), and its per-class behaviour travels in its buffers.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from hemo_model import CLASSES, LABEL_COLUMNS
from hemo_model.data.transforms import IMAGENET_MEAN, IMAGENET_STD

SIZE = 48
BLOCK = 8


def write_marker_data(root: Path, patients: int, slices: int = 22, seed: int = 0, rate: float = 0.3) -> Path:
    """A DLCV folder (train.csv + train/) of ``patients`` with random labels drawn as markers."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(patients):
        key = f"{rng.integers(16**10):010x}"
        folder = root / "train" / f"ID_{key}"
        folder.mkdir(parents=True)
        for k in range(slices):
            labels = (rng.random(len(CLASSES)) < rate).astype(int)
            pixels = np.full((SIZE, SIZE), 90, dtype=np.uint8)
            for c, y in enumerate(labels):
                pixels[:BLOCK, c * BLOCK:(c + 1) * BLOCK] = 255 if y else 0
            Image.fromarray(pixels, mode="L").save(folder / f"{key}_{k}.jpg", quality=100)
            rows.append([f"ID_{key}", f"{key}_{k}.jpg", *labels.tolist()])
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(LABEL_COLUMNS)
        writer.writerows(rows)
    return root


class MarkerNet(nn.Module):
    """(B, 3, H, W) ImageNet-normalised slices -> (B, 5) logits from the marker blocks."""

    def __init__(self, modes: Sequence[str] = ("read",) * 5) -> None:
        super().__init__()
        gain = [8.0 if m == "read" else 0.0 for m in modes]
        bias = [{"read": 0.0, "positive": 8.0, "negative": -8.0}[m] for m in modes]
        self.register_buffer("gain", torch.tensor(gain))
        self.register_buffer("bias", torch.tensor(bias))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN[0]))
        self.register_buffer("std", torch.tensor(IMAGENET_STD[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = x[:, :1].float() * self.std + self.mean  # back to [0, 1]
        cells = nn.functional.adaptive_avg_pool2d(gray, (SIZE // BLOCK, SIZE // BLOCK))  # one cell per block
        marks = cells[:, 0, 0, : len(CLASSES)]
        return (marks - 0.5) * self.gain * 2.0 + self.bias


ARCHITECTURE = "markers"


def marker_spec(**fields: object) -> object:
    """A spec for a :class:`MarkerNet` (needs :func:`marker_architecture` active)."""
    from hemo_model.model.spec import ModelSpec

    return ModelSpec(architecture=ARCHITECTURE, image_size=SIZE, **fields)  # type: ignore[arg-type]


@pytest.fixture
def marker_architecture(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make ``markers`` a network the library knows for the test (spec check and builder)."""
    from hemo_model.model import networks, spec

    monkeypatch.setitem(spec.ARCHITECTURES, ARCHITECTURE, "tests.markers.MarkerNet")
    monkeypatch.setitem(networks.BUILDERS, ARCHITECTURE, lambda _spec, _pretrained: MarkerNet())
    yield
