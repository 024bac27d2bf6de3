"""The device-side input step and augmentation: the same distributions and geometry as the
method's torchvision v2 pipeline, one draw per window, fill 0, seeded, and normalisation equal to
the CPU reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from hemo_model.data.transforms import METHOD_AUGMENTATION, AffineParams, Augmentation, normalize, to_model_input

N = 20000
SIZE = 64


@pytest.fixture(scope="module")
def ours() -> AffineParams:
    return METHOD_AUGMENTATION.sample(N, SIZE, SIZE, torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    torch.manual_seed(0)
    image = torch.zeros(1, SIZE, SIZE)
    affine, rotate = v2.RandomAffine(degrees=0, translate=(0.2, 0.2)), v2.RandomRotation(degrees=15)
    draws = [affine.make_params([image])["translate"] for _ in range(N)]
    return {"tx": np.array([d[0] for d in draws], float), "ty": np.array([d[1] for d in draws], float),
            "angle": np.array([rotate.make_params([image])["angle"] for _ in range(N)])}


def test_parameter_ranges_and_statistics_match_torchvision_v2(ours: AffineParams, reference: dict) -> None:
    assert abs(ours.flip.float().mean().item() - 0.5) < 0.015  # v2.RandomHorizontalFlip(p=0.5)
    for name in ("tx", "ty"):
        mine, theirs = getattr(ours, name).numpy(), reference[name]
        assert np.array_equal(mine, np.round(mine))  # whole pixels, as v2 rounds
        assert mine.min() == theirs.min() == -round(0.2 * SIZE) and mine.max() == theirs.max() == round(0.2 * SIZE)
        assert abs(mine.mean() - theirs.mean()) < 0.25 and abs(mine.std() - theirs.std()) < 0.15
        assert np.abs(np.quantile(mine, [0.1, 0.5, 0.9]) - np.quantile(theirs, [0.1, 0.5, 0.9])).max() <= 1.0
    angle = ours.angle.numpy()
    assert -15.0 <= angle.min() and angle.max() <= 15.0 and -15.0 <= reference["angle"].min()
    assert abs(angle.std() - reference["angle"].std()) < 0.2 and abs(angle.mean()) < 0.2
    assert np.abs(np.quantile(angle, [0.1, 0.5, 0.9]) - np.quantile(reference["angle"], [0.1, 0.5, 0.9])).max() < 0.5


def _apply(params: AffineParams, image: torch.Tensor) -> torch.Tensor:
    aug = Augmentation()
    theta = aug.theta(params, SIZE, SIZE)
    grid = torch.nn.functional.affine_grid(theta, [1, 1, SIZE, SIZE], align_corners=False)
    return torch.nn.functional.grid_sample(image[None], grid, mode="nearest", padding_mode="zeros",
                                           align_corners=False)[0]


@pytest.mark.parametrize("flip, tx, ty", [(False, 7, 0), (False, 0, -5), (True, 0, 0), (True, -9, 4)])
def test_flip_and_translation_equal_torchvision_pixel_for_pixel(flip: bool, tx: int, ty: int) -> None:
    image = torch.rand(1, SIZE, SIZE)
    params = AffineParams(torch.tensor([flip]), torch.tensor([float(tx)]), torch.tensor([float(ty)]), torch.tensor([0.0]))
    expected = TF.horizontal_flip(image) if flip else image
    expected = TF.affine(expected, angle=0.0, translate=[tx, ty], scale=1.0, shear=[0.0, 0.0])
    assert torch.equal(_apply(params, image), expected)


def test_rotation_agrees_with_torchvision() -> None:
    image = torch.zeros(1, SIZE, SIZE)
    image[:, 20:30, 36:50] = 1.0  # an off-centre block shows the direction of the rotation
    params = AffineParams(torch.tensor([False]), torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([12.0]))
    expected = TF.rotate(image, 12.0)
    assert (_apply(params, image) == expected).float().mean() > 0.99


@pytest.mark.parametrize("flip, tx, ty, angle", [(True, 5, -3, 10.0), (False, -8, 6, -13.0)])
def test_the_whole_composition_agrees_with_the_v2_pipeline(flip: bool, tx: int, ty: int, angle: float) -> None:
    """v2 resamples three times (flip, translate, rotate, nearest each); one composed resampling
    differs from it only where the repeated rounding does."""
    torch.manual_seed(0)
    image = torch.rand(1, SIZE, SIZE)
    params = AffineParams(torch.tensor([flip]), torch.tensor([float(tx)]), torch.tensor([float(ty)]),
                          torch.tensor([angle]))
    expected = TF.horizontal_flip(image) if flip else image
    expected = TF.rotate(TF.affine(expected, angle=0.0, translate=[tx, ty], scale=1.0, shear=[0.0, 0.0]), angle)
    assert (_apply(params, image) == expected).float().mean() > 0.94


def test_fill_is_air_and_windows_share_one_geometry() -> None:
    ones = torch.full((4, 1, SIZE, SIZE), 255, dtype=torch.uint8)
    window = torch.stack([ones[:, 0]] * 5, dim=1)[:, :, None]  # (4, 5, 1, H, W), five identical slices
    out = to_model_input(window, torch.device("cpu"), METHOD_AUGMENTATION, torch.Generator().manual_seed(3))
    assert out.shape == (4, 5, 3, SIZE, SIZE)
    air = normalize(torch.zeros(1, 1, 1))[:, 0, 0]  # what a fill of 0 becomes after normalisation
    for sample in out:  # every slice of a window moved the same way
        assert all(torch.equal(sample[0], sample[i]) for i in range(1, 5))
    assert not torch.equal(out[0], out[1])  # different samples, different draws
    uncovered = ((out[:, 0] - air.view(1, 3, 1, 1)).abs() < 1e-5).all(dim=1)  # all 3 channels are air
    assert all(mask.any() for mask in uncovered), "every sample was moved, uncovering pixels filled with air"
    assert ((out[:, 0] - air.view(1, 3, 1, 1)).abs() > 1e-3).any()  # and the image itself is still there


def test_seeded_draws_and_no_augmentation_equals_the_reference_normalisation() -> None:
    batch = torch.randint(0, 256, (6, 1, SIZE, SIZE), dtype=torch.uint8)
    device = torch.device("cpu")
    a = to_model_input(batch, device, METHOD_AUGMENTATION, torch.Generator().manual_seed(9))
    b = to_model_input(batch, device, METHOD_AUGMENTATION, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    plain = to_model_input(batch, device)
    assert plain.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(plain, normalize(batch.float() / 255.0), atol=1e-6)
    rgb = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)  # three CT windows as channels
    assert torch.allclose(to_model_input(rgb, device), normalize(rgb.float() / 255.0), atol=1e-6)
