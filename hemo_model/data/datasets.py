"""The PyTorch datasets of slices: single slices (stage 1, inference) and 5-slice windows (stage 2).

Slices are handed out as uint8 (8-bit grayscale, or three CT windows as RGB) at ``image_size``;
the device turns them into what a torchvision ResNet expects (:mod:`hemo_model.data.transforms`).
A window centred on slice k has its indices clamped at the sequence ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hemo_model import CLASSES
from hemo_model.data.cache import SliceCache
from hemo_model.data.images import read_pixels
from hemo_model.data.patients import PatientSequence


def window_indices(n: int, k: int, width: int = 5) -> list[int]:
    """Indices of the ``width``-slice window centred on ``k``, clamped at the sequence ends."""
    half = width // 2
    return [min(max(i, 0), n - 1) for i in range(k - half, k + half + 1)]


class _SliceSource(Dataset):
    """Shared slice reading: uint8 pixels, from a :class:`SliceCache` when there is one.

    Items leave the dataset as uint8: normalisation, the 3-channel expansion and augmentation
    happen on the device (:func:`hemo_model.data.transforms.to_model_input`), so a 512 px slice
    crosses processes and the bus as 256 KB instead of a 3 MB float tensor."""

    def __init__(self, patients: Sequence[PatientSequence], image_size: int, cache: SliceCache | bool = False,
                 channels: int = 1) -> None:
        self.patients = list(patients)
        self.image_size = image_size
        self.channels = channels
        self.items = [(p, k) for p, patient in enumerate(self.patients) for k in range(len(patient))]
        if cache is True:
            cache = SliceCache.build([path for p in self.patients for path in p.paths], image_size, channels)
        self.cache: SliceCache | None = cache or None

    def __len__(self) -> int:
        return len(self.items)

    def _pixels(self, path: Path) -> np.ndarray:
        if self.cache is not None:
            return self.cache.get(path)
        return read_pixels(path, self.image_size, self.channels)

    def item_labels(self) -> np.ndarray:
        """The labels of every item in order (items x classes; NaN where unlabelled): what
        class-aware sampling counts, without reading a pixel."""
        blocks = [np.full((len(patient), len(CLASSES)), np.nan, dtype=np.float32) if patient.labels is None
                  else np.asarray(patient.labels, dtype=np.float32) for patient in self.patients]
        every = np.concatenate(blocks) if blocks else np.zeros((0, len(CLASSES)), dtype=np.float32)
        starts = np.cumsum([0] + [len(patient) for patient in self.patients])[:-1]
        return every[[starts[p] + k for p, k in self.items]] if self.items else every[:0]

    def _target(self, patient: PatientSequence, k: int) -> torch.Tensor:
        if patient.labels is None:
            return torch.full((len(CLASSES),), float("nan"))
        return torch.from_numpy(patient.labels[k])


class SliceDataset(_SliceSource):
    """Single slices (stage 1, and inference): uint8 ``(C, H, W)`` and the slice's 5 labels."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, k = self.items[index]
        patient = self.patients[p]
        return torch.from_numpy(np.array(self._pixels(patient.paths[k]))), self._target(patient, k)


class WindowDataset(_SliceSource):
    """5-slice windows (stage 2): uint8 ``(5, C, H, W)`` around slice k and the labels of slice k."""

    def __init__(self, *args, width: int = 5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.width = width

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, k = self.items[index]
        patient = self.patients[p]
        stack = np.stack([self._pixels(patient.paths[i]) for i in window_indices(len(patient), k, self.width)])
        return torch.from_numpy(stack), self._target(patient, k)
