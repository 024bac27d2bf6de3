"""Saliency overlays for `hemo score --overlays`: for each exam and each type it flags, the top
evidence slice with its occlusion-sensitivity map (:func:`hemo_model.inference.saliency.occlusion_map`;
why occlusion rather than Grad-CAM is measured there), written as PNG, with the map itself beside it
(``.saliency.npz``) for `hemo report`'s Secondary Captures.

The map explains the single-slice network (the one forward pass a slice gets); a version served
with its 5-slice context decides from neighbouring slices too, which the map does not show. An
ensemble's maps are its first member's. Files are named by the pipeline's exam folder and type only,
never by anything from a DICOM header.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hemo_model import CLASSES
from hemo_model.data.images import read_pixels
from hemo_model.inference.saliency import occlusion_map
from hemo_pipeline.services.files import write_figure_atomic
from hemo_pipeline.services.plots import plt, saliency_overlay_figure
from hemo_pipeline.services.score_files import saliency_file, save_saliency

SALIENCY_METHOD = "occlusion sensitivity of the single-slice network, hyperdense tissue lowered to brain"


def slice_saliency(model: Any, module: torch.nn.Module, path: Path, class_index: int,
                   device: torch.device) -> np.ndarray:
    """The map an overlay shows for one slice file and class: the one place its method and
    geometry are chosen, so that `hemo evaluate`'s pointing game checks exactly what readers see."""
    size = model.image_size
    image = torch.from_numpy(np.array(read_pixels(path, size, model.channels)))  # writable copy
    return occlusion_map(module, image, class_index, device, patch=max(size // 8, 4), stride=max(size // 16, 2))


def write_overlays(folder: Path, models: Sequence[Any], patient: Any, flags: np.ndarray,
                   evidence: list[list[int]], device: torch.device) -> list[Path]:
    """One overlay per type some slice of ``patient`` is flagged for (``flags``: slices x types),
    drawn on that type's most suspicious slice (``evidence``); returns the files written."""
    model = models[0]
    size = model.image_size
    module = model.module.to(device)
    written = []
    for index, name in enumerate(CLASSES):
        if not flags[:, index].any():
            continue
        k = evidence[index][0]
        saliency = slice_saliency(model, module, patient.paths[k], index, device)
        figure = saliency_overlay_figure(read_pixels(patient.paths[k], size, model.channels)[0], saliency,
                                         f"{patient.dirname} slice {patient.paths[k].name}: {name}")
        target = folder / f"{patient.dirname}_{name}.png"
        write_figure_atomic(target, figure, dpi=90)
        save_saliency(saliency_file(folder, patient.dirname, name), saliency, patient.paths[k].name)
        plt.close(figure)
        written.append(target)
    return written
