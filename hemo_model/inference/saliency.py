"""Where the network looked: Grad-CAM maps per slice and class, and the pointing game that checks
them where the answer is known.

Grad-CAM (Selvaraju et al., 2017): the gradients of one class's logit with respect to a late
convolutional stage (for HemoNet the ResNet's ``layer4``, 1/32 of the input size), averaged over
space, weight that stage's channels; the ReLU of the weighted sum, upsampled to the slice, is the
map. It needs one backward pass per class, which is why maps are drawn for the evidence slices
only. The pointing game (Zhang et al., 2016) asks whether a map's maximum falls on the lesion,
with a tolerance in pixels for the map's coarse grid (15 px at 224 px in the original); on phantom
data the generator's lesion masks give the answer.
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
