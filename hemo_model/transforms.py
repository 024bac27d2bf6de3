"""Training augmentation of the method: HFlip p=0.5, affine translate (0.2, 0.2), rotation 15.

Applied to a (slices, H, W) tensor in [0, 1] before normalisation, so the fill of translated or
rotated borders is 0 (air) and every slice of a 5-slice window gets the same geometry. None is
applied at evaluation.
"""

from __future__ import annotations

from torchvision.transforms import v2


def train_augmentation() -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomAffine(degrees=0, translate=(0.2, 0.2)),
            v2.RandomRotation(degrees=15),
        ]
    )
