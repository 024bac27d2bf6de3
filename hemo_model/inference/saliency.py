"""Where the network looked: Grad-CAM and occlusion maps per slice and class, and the pointing game
that checks them where the answer is known.

Grad-CAM (Selvaraju et al., 2017): the gradients of one class's logit with respect to a late
convolutional stage (for HemoNet the ResNet's ``layer4``, 1/32 of the input size), averaged over
space, weight that stage's channels; the ReLU of the weighted sum, upsampled to the slice, is the
map. It needs one backward pass per class, which is why maps are drawn for the evidence slices
only. The pointing game (Zhang et al., 2016) asks whether a map's maximum falls on the lesion,
with a tolerance in pixels for the map's coarse grid (15 px at 224 px in the original); on phantom
data the generator's lesion masks give the answer.

Occlusion sensitivity (Zeiler and Fergus, 2014) is what `hemo score --overlays` draws: on the
phantom (make run's 128 px model, benchmarks/saliency_pointing.py, 4 patients) Grad-CAM's maximum
fell within tolerance of the lesion on 0/9 ICH, 3/24 SAH and 7/13 SDH flagged slices (layer3; fewer
at layer4), occlusion's on 8/9, 17/24 and 6/13 (its squares then filled the skull too); filling the ICH
lesion lowered the probability (0.55 -> 0.31) where filling Grad-CAM's peak did not. Grad-CAM's 4x4
(layer4) or 8x8 (layer3) grid at 128 px is too coarse for small lesions; occlusion costs one forward pass per square instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt
from torch import nn

from hemo_model.data.transforms import to_model_input


def grad_cam(model: nn.Module, layer: nn.Module, inputs: torch.Tensor, classes: Sequence[int]) -> np.ndarray:
    """Maps of shape (len(classes), B, H, W) in [0, 1] (each map scaled by its own maximum; an
    all-zero map stays zero) for model-ready float ``inputs`` (B, 3, H, W), taken at ``layer``'s
    output. The model is used in eval mode and left as it was."""
    captured: dict[str, torch.Tensor] = {}

    def keep(_module: nn.Module, _args: object, output: torch.Tensor) -> None:
        captured["activation"] = output

    was_training = model.training
    model.eval()
    handle = layer.register_forward_hook(keep)
    maps = []
    try:
        with torch.enable_grad():
            # the input asks for gradients so that the layer's output does even in a network without
            # trainable weights before it; torch.autograd.grad leaves every parameter's .grad untouched
            x = inputs.detach().float().requires_grad_(True)
            logits = model(x)
            activation = captured["activation"]
            for index in classes:
                (gradient,) = torch.autograd.grad(logits[:, index].sum(), activation, retain_graph=True)
                weights = gradient.mean(dim=(2, 3), keepdim=True)
                cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
                cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
                peak = cam.flatten(1).amax(dim=1).clamp_min(1e-12).view(-1, 1, 1)
                maps.append((cam / peak).detach().cpu().numpy())
    finally:
        handle.remove()
        model.train(was_training)
    return np.stack(maps)


def slice_grad_cam(model: nn.Module, images: torch.Tensor, classes: Sequence[int],
                   device: torch.device) -> np.ndarray:
    """Grad-CAM for uint8 slices (B, C, H, W) through the one input path, at HemoNet's last ResNet
    stage."""
    backbone = getattr(model, "backbone", None)
    if backbone is None or not hasattr(backbone, "layer4"):
        raise ValueError("slice_grad_cam needs a HemoNet (a ResNet backbone with layer4); use grad_cam with a layer")
    return grad_cam(model, backbone.layer4, to_model_input(images, device), classes)


def soft_tissue(image: torch.Tensor) -> torch.Tensor:
    """(H, W) booleans: the pixels of a uint8 slice (C, H, W) that show soft tissue, which the first
    channel (the brain window) shows between air (0) and saturation (255, bone and the densest blood).
    What occlusion squares and lesion deletion may paint over: air or bone painted over is a new
    finding, not an absent one."""
    return (image[0] > 0) & (image[0] < 255)


OCCLUDED = ("hyperdense", "soft_tissue")
"""What an occlusion square lowers to the median soft tissue: its hyperdense soft tissue (the maps
`hemo score --overlays` draws), or all of its soft tissue."""


@torch.no_grad()
def occlusion_map(model: nn.Module, image: torch.Tensor, class_index: int, device: torch.device,
                  patch: int, stride: int, batch_size: int = 64, lower: str = "hyperdense") -> np.ndarray:
    """Occlusion sensitivity (Zeiler and Fergus, 2014) of one uint8 slice (C, H, W) for one class:
    in each ``patch`` x ``patch`` square (every ``stride`` px) the hyperdense soft tissue is lowered
    to the slice's median soft tissue (:func:`hyperdense`), and the drop in the class's probability
    is spread over the square; the map (H, W) is the mean drop per pixel, negative drops clipped to
    0, scaled to [0, 1] by its maximum. It asks the model directly which pixels its answer rests on,
    at the cost of one forward pass per square; on the phantom, Grad-CAM's coarse maps missed
    lesions whose filling did lower the probability.

    What a square takes away is chosen so that the slice stays one a scanner could show: acute blood
    is hyperdense, so lowering what is brighter than brain to brain removes a bleed, while air,
    bone, CSF and the ventricles stay as they are. Painting over any of those is a finding of its
    own that the network answers and the map then points at. Filling the skull drew SDH maps onto
    the bone (16 fresh phantom patients, make run's model, 3 most confident SDH slices each: the
    maximum within tolerance of the lesion on 7/18 flagged slices, 15/18 with the skull kept);
    filling the ventricles and sulci with brain drew them onto the ventricles (the 240-patient
    phantom's 53 gate patients, the top evidence slice per exam and type: SDH 16/21 with every soft
    tissue pixel filled, 18/21 with only the hyperdense ones; on three other sets the counts moved
    by -1, -1 and 0, so the hit rate within tolerance did not measurably change, while maxima on the
    lesion itself rose from 9 to 16 of 62 SDH maps; README). ``lower="soft_tissue"`` fills
    every soft tissue pixel instead, as maps were drawn before, for benchmarks that compare the two."""
    if lower not in OCCLUDED:
        raise ValueError(f"lower must be one of {', '.join(OCCLUDED)}, got {lower!r}")
    was_training = model.training
    model.eval()
    try:
        c, h, w = image.shape
        soft = soft_tissue(image)
        if not bool(soft.any()):  # a slice all air and bone: its non-air pixels, the best stand-in there is
            soft = image[0] > 0
        fill = [int(ch[soft].float().median().item()) if bool(soft.any()) else 0 for ch in image]  # per window
        lowered = hyperdense(image, soft, fill[0]) if lower == "hyperdense" else soft
        corners = [(y, x) for y in range(0, max(h - patch, 0) + 1, stride) for x in range(0, max(w - patch, 0) + 1, stride)]
        base = torch.sigmoid(model(to_model_input(image[None], device)).float())[0, class_index].item()
        drop, cover = np.zeros((h, w)), np.zeros((h, w))
        for start in range(0, len(corners), batch_size):
            chunk = corners[start:start + batch_size]
            occluded = image[None].repeat(len(chunk), 1, 1, 1)
            for i, (y, x) in enumerate(chunk):
                square = lowered[y:y + patch, x:x + patch]
                for channel, value in enumerate(fill):
                    occluded[i, channel, y:y + patch, x:x + patch][square] = value
            probs = torch.sigmoid(model(to_model_input(occluded, device)).float())[:, class_index].cpu().numpy()
            for (y, x), p in zip(chunk, probs):
                drop[y:y + patch, x:x + patch] += base - p
                cover[y:y + patch, x:x + patch] += 1
        sensitivity = np.clip(drop / np.maximum(cover, 1), 0.0, None)
        peak = sensitivity.max()
        return sensitivity / peak if peak > 0 else sensitivity
    finally:
        model.train(was_training)


def hyperdense(image: torch.Tensor, soft: torch.Tensor, level: int) -> torch.Tensor:
    """(H, W) booleans: the ``soft`` tissue pixels of a uint8 slice (C, H, W) that the first channel
    (the brain window) shows brighter than ``level`` (the median soft tissue): what an occlusion
    square lowers to brain. Grey matter a little above the median goes with the blood, which costs
    little: lowering it by a few grey levels is not a finding."""
    return soft & (image[0] > level)


def pointing_hit(saliency: np.ndarray, mask: np.ndarray, tolerance_px: float = 0.0) -> bool | None:
    """Whether the map's maximum lies on the mask or within ``tolerance_px`` of it (None: empty
    mask, nothing to point at; a flat map points at its first pixel)."""
    if saliency.shape != mask.shape:
        raise ValueError(f"map and mask differ in shape: {saliency.shape} and {mask.shape}")
    if not mask.any():
        return None
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    if mask[y, x]:
        return True
    distance = distance_transform_edt(~mask.astype(bool))
    return bool(distance[y, x] <= tolerance_px)
