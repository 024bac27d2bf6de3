"""Scoring whole patient sequences with 5-slice context at one forward pass per slice.

The method scores slice k from the weighted sum of the logits of slices k-2..k+2. Scoring
each window separately costs 5 forward passes per slice; because the weighted sum is linear in
the per-slice logits, it equals running the model once per slice and then applying the 5-tap
filter along the sequence (edge slices replicated, exactly like clamped window indices).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from hemo_model import CLASSES
from hemo_model.data.cache import SliceCache
from hemo_model.data.datasets import SliceDataset, WindowDataset
from hemo_model.data.patients import PatientSequence
from hemo_model.data.transforms import to_model_input
from hemo_model.inference.precision import autocast


def context_filter(logits: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Weighted sum over a window of slices along dim 0 of (n, C) logits, edges replicated."""
    width = len(weights)
    if width == 1:
        return logits * float(weights[0])
    half = width // 2
    padded = torch.cat([logits[:1].expand(half, -1), logits, logits[-1:].expand(half, -1)])
    n = logits.shape[0]
    total = float(weights[0]) * padded[:n]
    for i, w in enumerate(weights[1:], start=1):  # in order, as the method's weighted sum
        total = total + float(w) * padded[i : i + n]
    return total


@dataclass
class SequenceScores:
    """Per-slice logits of one patient, before (``slice_logits``) and after the context filter."""

    patient: PatientSequence
    slice_logits: np.ndarray
    logits: np.ndarray

    @classmethod
    def filtered(cls, patient: PatientSequence, slice_logits: np.ndarray, weights: Sequence[float]) -> SequenceScores:
        """Apply the context filter along the sequence to one forward pass per slice."""
        return cls(patient, slice_logits, context_filter(torch.from_numpy(slice_logits), weights).numpy())

    def with_context(self, weights: Sequence[float]) -> SequenceScores:
        """The same forward passes under other context weights (no new forward pass)."""
        return SequenceScores.filtered(self.patient, self.slice_logits, weights)

    def single(self) -> SequenceScores:
        """Single-slice scores: each slice on its own, no context."""
        return SequenceScores(self.patient, self.slice_logits, self.slice_logits)

    @property
    def probabilities(self) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits))


def _loader(dataset: torch.utils.data.Dataset, batch_size: int | None, workers: int, device: torch.device) -> DataLoader:
    """In-order batches of uint8 slices: workers decode (and prefetch) while the device computes."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", prefetch_factor=4 if workers > 0 else None)


def _average(models: nn.Module | Sequence[nn.Module], inputs: torch.Tensor) -> torch.Tensor:
    """The model's output, or an ensemble's mean output (the method's 3-model logit average):
    each input is decoded and moved to the device once, whatever the number of models."""
    if isinstance(models, nn.Module):
        return models(inputs).float()
    return torch.stack([m(inputs).float() for m in models]).mean(dim=0)


@torch.no_grad()
def slice_logits(model: nn.Module | Sequence[nn.Module], dataset: SliceDataset, device: torch.device,
                 precision: str = "fp32", batch_size: int = 32, workers: int = 0, progress: bool = False) -> np.ndarray:
    """(N, 5) logits for every item of ``dataset``, in order: one forward pass per slice (per model;
    an ensemble's logits are averaged)."""
    outputs = []
    batches: Iterator = iter(_loader(dataset, batch_size, workers, device))
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, total=-(-len(dataset) // batch_size), desc="scoring", unit="batch", disable=None)
    for images, _ in batches:
        images = to_model_input(images, device)
        with autocast(device, precision):
            outputs.append(_average(model, images).cpu())
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, len(CLASSES)), dtype=np.float32)


def score_sequences(model: nn.Module | Sequence[nn.Module], patients: Sequence[PatientSequence], image_size: int,
                    weights: Sequence[float], device: torch.device, precision: str = "fp32",
                    batch_size: int = 32, workers: int = 0, cache: SliceCache | bool = False,
                    progress: bool = False, channels: int = 1) -> list[SequenceScores]:
    """Score every slice once, then filter each patient's logits along the sequence."""
    dataset = SliceDataset(patients, image_size, cache=cache, channels=channels)
    flat = slice_logits(model, dataset, device, precision, batch_size, workers, progress)
    results, start = [], 0
    for patient in patients:
        results.append(SequenceScores.filtered(patient, flat[start : start + len(patient)], weights))
        start += len(patient)
    return results


class _PatientStacks(torch.utils.data.Dataset):
    """One item per patient: all its slices, uint8 (S, C, H, W), for models that read a whole sequence."""

    def __init__(self, patients: Sequence[PatientSequence], image_size: int, channels: int = 1) -> None:
        self.slices = SliceDataset(patients, image_size, channels=channels)
        self.starts = np.cumsum([0] + [len(p) for p in patients]).tolist()

    def __len__(self) -> int:
        return len(self.starts) - 1

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.stack([self.slices[i][0] for i in range(self.starts[index], self.starts[index + 1])])


@torch.no_grad()
def score_sequence_model(model: nn.Module | Sequence[nn.Module], patients: Sequence[PatientSequence], image_size: int,
                         device: torch.device, precision: str = "fp32", workers: int = 0,
                         progress: bool = False, channels: int = 1) -> list[SequenceScores]:
    """Learned-context models (:class:`hemo_model.context.SequenceModel`): one forward pass per
    patient over its whole sequence, returning per-slice and context logits."""
    loader: Iterator = iter(_loader(_PatientStacks(patients, image_size, channels), None, workers, device))
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, total=len(patients), desc="scoring", unit="patient", disable=None)
    results = []
    for patient, stack in zip(patients, loader):
        stack = to_model_input(stack, device)
        with autocast(device, precision):
            out = _average(model, stack).cpu().numpy()
        results.append(SequenceScores(patient, out[:, :len(CLASSES)], out[:, len(CLASSES):]))
    return results


@torch.no_grad()
def score_windows_naive(model: nn.Module, patients: Sequence[PatientSequence], image_size: int,
                        weights: Sequence[float], device: torch.device, precision: str = "fp32",
                        batch_size: int = 8) -> np.ndarray:
    """Reference scorer: each slice's 5-slice window through the model (5 passes per slice).
    Kept for the equivalence test and the benchmark; use :func:`score_sequences` in practice."""
    from hemo_model.model.networks import ContextModel

    context = ContextModel(model, weights) if len(weights) > 1 else None
    dataset = WindowDataset(patients, image_size, width=len(weights))
    outputs = []
    for windows, _ in _loader(dataset, batch_size, 0, device):
        windows = to_model_input(windows, device)
        with autocast(device, precision):
            if context is None:
                out = model(windows[:, 0]).float() * float(weights[0])
            else:
                out = context(windows)
        outputs.append(out.float().cpu())
    return torch.cat(outputs).numpy()


def stack_scores(scores: Sequence[SequenceScores]) -> tuple[np.ndarray, np.ndarray | None]:
    """All slices' probabilities (N, 5) and, if every patient is labelled, their labels."""
    empty = np.zeros((0, len(CLASSES)))
    probs = np.concatenate([s.probabilities for s in scores]) if scores else empty
    if all(s.patient.labels is not None for s in scores):
        return probs, np.concatenate([s.patient.labels for s in scores]) if scores else empty
    return probs, None
