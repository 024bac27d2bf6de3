"""The pointing game on the slices a reader is shown: does the saliency map's maximum fall on the
lesion the exam was flagged for?

`hemo score --overlays` draws, per exam and flagged type, a saliency map on the type's evidence
slices. Where the lesions are outlined (:mod:`hemo_model.data.lesion_masks`: the phantom's, or a
team's segmentations) the same maps can be checked: a hit is a map whose maximum lies on the
type's lesion or within the pointing game's tolerance of it (Zhang et al., 2016: 15 px at 224 px,
scaled here to the model's image size, since a map from squares of 1/8 of the image cannot place
its peak finer). Only evidence slices that show the type's lesion count; one that does not is
counted apart (the exam was flagged on the wrong slice, a finding of its own). The hit rate per
class comes with its count and an exact interval.

A map can only point at the lesion if the flag rests on it, so each checked slice is also scored
with its lesion deleted (:func:`delete_lesion`: the outline, grown by a pixel, filled with the
median of the soft tissue around it). A flag of the single-slice network that falls below its
threshold then rests on the lesion; one that stands rests on something else, and a faithful map
must point elsewhere: where flags stand, the pointing game measures the model, not the map. For a
bleed in a CSF space (SAH in the sulci, an SDH over the cortex's CSF rim, IVH) the fill is not what
the slice would show without it: grey matter where CSF should be is itself abnormal, so a flag can
stand on the fill and the count of flags that rest on the lesion is a lower bound there. On 16
fresh phantom patients, where the generator draws the same slice without the lesion, 14/21 SAH and
6/18 SDH flags fell with the lesion truly absent and 0/21, 0/18 with it filled (ICH 18/19 both).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import binary_dilation
from torch import nn

from hemo_model import CLASSES
from hemo_model.data.transforms import to_model_input
from hemo_model.inference.saliency import pointing_hit, soft_tissue

POINTING_TOLERANCE_AT_224 = 15.0


def pointing_tolerance(image_size: int) -> float:
    """The pointing game's 15 px at 224 px, scaled to ``image_size``."""
    return image_size * POINTING_TOLERANCE_AT_224 / 224.0


@dataclass(frozen=True)
class PointingCase:
    """One map checked: exam, slice index, class index, and where its maximum fell."""

    exam: str
    slice_index: int
    class_index: int
    hit: bool
    """The maximum lies on the lesion or within the tolerance."""
    exact: bool
    """The maximum lies on the lesion itself."""
    before: float | None = None
    """The single-slice probability of the class, and with the lesion deleted (None: not scored)."""
    after: float | None = None
    flagged_alone: bool | None = None
    """The single-slice network flags the slice at its threshold (not only through the context)."""
    rests_on_lesion: bool | None = None
    """Flagged alone, and no longer once the lesion is deleted."""


@dataclass(frozen=True)
class EvidenceSlice:
    """A slice an exam's overlay would be drawn on for one class, with that class's outline."""

    exam: str
    slice_index: int
    class_index: int
    lesion: np.ndarray
    """(H, W) booleans at the model's image size: the class's lesion on this slice."""


def evidence_to_check(exam: str, flags: np.ndarray, evidence: Sequence[Sequence[int]],
                      lesion: Callable[[int], np.ndarray], per_class: int
                      ) -> tuple[list[EvidenceSlice], list[tuple[int, int]]]:
    """For one exam: the evidence slices (``evidence[c]``, most suspicious first, as
    :func:`hemo_model.inference.exam.evidence_slices` orders them) of each class some slice is
    flagged for (``flags``: slices x classes), at most ``per_class`` of them, that are flagged and
    show the class's lesion (``lesion(k)``: slice k's classes x H x W outlines); and the
    (slice, class) pairs of flagged evidence slices that show no such lesion."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    checked: list[EvidenceSlice] = []
    off_lesion: list[tuple[int, int]] = []
    outlines: dict[int, np.ndarray] = {}
    for c in range(flags.shape[1]):
        if not flags[:, c].any():
            continue
        for k in [k for k in evidence[c] if flags[k, c]][:per_class]:
            if k not in outlines:
                outlines[k] = lesion(k)
            if outlines[k][c].any():
                checked.append(EvidenceSlice(exam, k, c, outlines[k][c]))
            else:
                off_lesion.append((k, c))
    return checked, off_lesion


def delete_lesion(image: torch.Tensor, lesion: np.ndarray, ring_px: int = 3) -> torch.Tensor:
    """A copy of the uint8 slice (C, H, W) with the lesion, grown by one pixel, filled per channel
    with the median of the soft tissue in a ring of ``ring_px`` around it: a bleed replaced by what
    surrounds it, as a reader would imagine the slice without it. Soft tissue is what the first
    channel (the brain window) shows between air (0) and saturation (255): an SDH or EDH lies
    against the skull, which saturates the brain window, and filling it with bone would leave a
    bright crescent where the bleed was. Where the ring holds no soft tissue, the slice's soft
    tissue median."""
    core = binary_dilation(np.asarray(lesion, dtype=bool), iterations=1)
    area = torch.from_numpy(core)
    soft = soft_tissue(image)
    around = torch.from_numpy(binary_dilation(core, iterations=ring_px) & ~core) & soft
    if not bool(around.any()):
        around = soft & ~area
    out = image.clone()
    for channel in range(out.shape[0]):
        plane = out[channel]
        tissue = plane[around]
        plane[area] = int(tissue.float().median().item()) if tissue.numel() else 0
    return out


@torch.no_grad()
def lesion_reliance(model: nn.Module, image: torch.Tensor, lesion: np.ndarray, class_index: int,
                    device: torch.device) -> tuple[float, float]:
    """The class's single-slice probability for the uint8 slice (C, H, W), and with its lesion
    deleted (:func:`delete_lesion`). The model is used in eval mode and left as it was."""
    was_training = model.training
    model.eval()
    try:
        batch = torch.stack([image, delete_lesion(image, lesion)])
        probs = torch.sigmoid(model(to_model_input(batch, device)).float())[:, class_index].cpu().numpy()
    finally:
        model.train(was_training)
    return float(probs[0]), float(probs[1])


def play(slices: Sequence[EvidenceSlice], saliency: Callable[[EvidenceSlice], np.ndarray],
         tolerance_px: float, reliance: Callable[[EvidenceSlice], tuple[float, float]] | None = None,
         thresholds: Sequence[float] | None = None) -> list[PointingCase]:
    """Draw each slice's map with ``saliency`` and check where its maximum falls; with
    ``reliance`` (the probability before and after the lesion is deleted) and the single-slice
    ``thresholds``, also whether the flag rests on the lesion."""
    if (reliance is None) != (thresholds is None):
        raise ValueError("reliance and thresholds come together")
    cases = []
    for item in slices:
        heat = saliency(item)
        exact = bool(pointing_hit(heat, item.lesion))
        hit = exact or bool(pointing_hit(heat, item.lesion, tolerance_px))
        if reliance is None or thresholds is None:
            cases.append(PointingCase(item.exam, item.slice_index, item.class_index, hit, exact))
            continue
        before, after = reliance(item)
        threshold = thresholds[item.class_index]
        alone = before >= threshold
        cases.append(PointingCase(item.exam, item.slice_index, item.class_index, hit, exact, before, after,
                                  alone, alone and after < threshold))
    return cases


def hit_counts(cases: Sequence[PointingCase], classes: Sequence[str] = CLASSES) -> dict[str, dict[str, int]]:
    """Per class: maps checked, hits within the tolerance, exact hits; and where the lesion was
    deleted, flags of the single-slice network alone, those that rest on the lesion, and the hits
    among them."""
    table = {}
    for index, name in enumerate(classes):
        mine = [case for case in cases if case.class_index == index]
        resting = [case for case in mine if case.rests_on_lesion]
        table[name] = {"maps": len(mine), "hits": sum(case.hit for case in mine),
                       "exact_hits": sum(case.exact for case in mine),
                       "scored_deleted": sum(case.rests_on_lesion is not None for case in mine),
                       "flagged_alone": sum(bool(case.flagged_alone) for case in mine),
                       "rest_on_lesion": len(resting), "hits_resting": sum(case.hit for case in resting)}
    return table
