"""The one device-side input step, and the method's training augmentation run on the device.

Datasets hand out uint8 slices ``(B, C, H, W)`` (or 5-slice windows ``(B, 5, C, H, W)``);
:func:`to_model_input` moves them to the device, converts to [0, 1] floats, augments them (training
only), expands gray to 3 channels, applies ImageNet normalisation and sets channels_last. Training,
refinement, validation, evaluation, the gate and scoring all go through it.

Augmentation is the method's torchvision v2 pipeline, HFlip p=0.5, RandomAffine translate (0.2,
0.2), RandomRotation 15 degrees, fill 0 (air, before normalisation), drawn per sample from the same
distributions (tested against v2) and applied as one affine resampling per sample with
``affine_grid``/``grid_sample`` (nearest, like v2's default). Every slice of a window gets the same
geometry. Parameters are drawn on the CPU from a seeded generator, so a CPU run is deterministic,
a GPU run draws the same geometry, and ``--resume`` stays exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class AffineParams:
    """Per-sample draws: horizontal flip, translation in whole pixels (v2 rounds), rotation (deg)."""

    flip: torch.Tensor
    tx: torch.Tensor
    ty: torch.Tensor
    angle: torch.Tensor


@dataclass(frozen=True)
class Augmentation:
    """HFlip ``flip_p``, translate up to ``translate`` of the width/height, rotate up to ``degrees``."""

    flip_p: float = 0.5
    translate: float = 0.2
    degrees: float = 15.0

    def sample(self, n: int, height: int, width: int, generator: torch.Generator | None = None) -> AffineParams:
        """The same distributions as v2: flip ~ Bernoulli(p), tx ~ round(U(-0.2 W, 0.2 W)),
        ty ~ round(U(-0.2 H, 0.2 H)), angle ~ U(-15, 15)."""
        u = torch.rand(n, 4, generator=generator)
        max_dx, max_dy = self.translate * width, self.translate * height
        return AffineParams(
            flip=u[:, 0] < self.flip_p,
            tx=torch.round((u[:, 1] * 2 - 1) * max_dx),
            ty=torch.round((u[:, 2] * 2 - 1) * max_dy),
            angle=(u[:, 3] * 2 - 1) * self.degrees,
        )

    @staticmethod
    def theta(params: AffineParams, height: int, width: int) -> torch.Tensor:
        """(n, 2, 3) output->input maps for ``affine_grid`` (normalised coordinates, square pixels):
        the inverse of flip, then translate, then rotate about the centre, as v2 composes them."""
        n = params.flip.shape[0]
        radians = -params.angle * (math.pi / 180.0)  # positive = counter-clockwise on screen, as torchvision
        cos, sin = torch.cos(radians), torch.sin(radians)
        sign = torch.where(params.flip, -1.0, 1.0)
        aspect = width / height
        theta = torch.zeros(n, 2, 3)
        # input = F (R(-a) out - t): F flips x; R(-a) un-rotates; t is the translation in [-1, 1] units
        theta[:, 0, 0] = sign * cos
        theta[:, 0, 1] = sign * sin / aspect
        theta[:, 1, 0] = -sin * aspect
        theta[:, 1, 1] = cos
        theta[:, 0, 2] = -sign * params.tx * 2.0 / width
        theta[:, 1, 2] = -params.ty * 2.0 / height
        return theta

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment ``(n, K, H, W)`` floats in [0, 1]: one draw per sample, shared by its K planes
        (the slices of a window). Uncovered pixels are 0 (air)."""
        n, _, height, width = images.shape
        theta = self.theta(self.sample(n, height, width, generator), height, width).to(images.device, images.dtype)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        return F.grid_sample(images, grid, mode="nearest", padding_mode="zeros", align_corners=False)


METHOD_AUGMENTATION = Augmentation()


_AFFINE: dict[tuple[str, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}


def _affine(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet normalisation of uint8 values as one multiply-add: x * scale + shift per channel."""
    key = (str(device), dtype)
    if key not in _AFFINE:
        mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float64)
        std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
        _AFFINE[key] = ((1.0 / (255.0 * std)).to(device, dtype).view(1, 3, 1, 1),
                        (-mean / std).to(device, dtype).view(1, 3, 1, 1))
    return _AFFINE[key]


def to_model_input(batch: torch.Tensor, device: torch.device, augmentation: Augmentation | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 ``(B, C, H, W)`` -> float ``(B, 3, H, W)``, or windows ``(B, S, C, H, W)`` ->
    ``(B, S, 3, H, W)``: on ``device``, augmented if asked, 3 channels, ImageNet-normalised,
    channels_last. C is 1 (gray, repeated) or 3 (three CT windows). Normalisation and the channel
    expansion are one fused multiply-add written straight into a channels_last tensor."""
    x = batch.to(device, non_blocking=True)
    window = x.dim() == 5
    if window:
        b, s, c, h, w = x.shape
        x = x.reshape(b, s * c, h, w)  # the slices of a window share one geometry
    else:
        b, c, h, w = x.shape
        s = 1
    x = x.float()
    if augmentation is not None:  # resampling commutes with the per-channel affine map; 0 stays 0 (air)
        x = augmentation(x, generator)
    x = x.reshape(b * s, c, h, w)
    scale, shift = _affine(x.device, x.dtype)
    out = torch.empty((b * s, 3, h, w), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    torch.addcmul(shift, x, scale, out=out)  # broadcasts 1 -> 3 channels for gray input
    return out.view(b, s, 3, h, w) if window else out


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats (..., 1 or 3, H, W) -> ImageNet-normalised 3 channels (CPU helper for tests
    and tools that build model inputs by hand)."""
    if images.shape[-3] == 1:
        images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype).view(3, 1, 1)
    return (images - mean) / std


def reference_augmentation():  # pragma: no cover - exercised by the distribution test
    """The method's augmentation as torchvision v2 composes it (the reference the device
    implementation is tested against)."""
    from torchvision.transforms import v2

    return v2.Compose([v2.RandomHorizontalFlip(p=0.5), v2.RandomAffine(degrees=0, translate=(0.2, 0.2)),
                       v2.RandomRotation(degrees=15)])
