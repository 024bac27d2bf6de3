"""Grad-CAM on networks whose answer is known, and the pointing game by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from hemo_model.data.transforms import to_model_input
from hemo_model.inference.saliency import grad_cam, occlusion_map, pointing_hit, slice_grad_cam
from hemo_model.model.networks import HemoNet


class _Spotter(nn.Module):
    """Class 0's logit is the mean of the first channel (so its map is that channel, rectified),
    class 1's is minus it (so its map is empty wherever the channel is positive)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(x[:, :1])
        m = a.mean(dim=(1, 2, 3))
        return torch.stack([m, -m], dim=1)


def test_the_map_follows_what_raises_the_class() -> None:
    x = torch.zeros(2, 3, 16, 16)
    x[0, 0, 3, 12] = 5.0
    x[1, 0, 10, 4], x[1, 0, 2, 2] = 2.0, 1.0
    model = _Spotter()
    maps = grad_cam(model, model.features, x, classes=[0, 1])
    assert maps.shape == (2, 2, 16, 16)
    assert np.unravel_index(maps[0, 0].argmax(), (16, 16)) == (3, 12)
    assert np.unravel_index(maps[0, 1].argmax(), (16, 16)) == (10, 4)
    assert maps[0, 1, 2, 2] == pytest.approx(0.5)  # half the peak's evidence, scaled by the peak
    assert not maps[1].any()  # what lowers a class is not shown for it


def test_hemonet_maps_have_the_slice_size_and_leave_the_model_as_it_was() -> None:
    torch.manual_seed(0)
    model = HemoNet(head="linear").train()
    images = torch.randint(0, 256, (2, 1, 64, 64), dtype=torch.uint8)
    maps = slice_grad_cam(model, images, classes=[0, 4], device=torch.device("cpu"))
    assert maps.shape == (2, 2, 64, 64) and maps.min() >= 0.0 and maps.max() <= 1.0 + 1e-6
    assert model.training and all(p.grad is None for p in model.parameters())  # no gradient left behind


def test_pointing_game_by_hand() -> None:
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:4, 2:4] = True
    hot = np.zeros((10, 10))
    hot[3, 3] = 1.0
    assert pointing_hit(hot, mask) is True
    near = np.zeros((10, 10))
    near[3, 6] = 1.0  # 3 px right of the mask's edge column 3
    assert pointing_hit(near, mask) is False and pointing_hit(near, mask, tolerance_px=3) is True
    assert pointing_hit(hot, np.zeros((10, 10), dtype=bool)) is None


class _Region(nn.Module):
    """Class 0's logit rises with the brightness of rows 4-7, columns 8-11 (first channel) and
    ignores everything else."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spot = x[:, 0, 4:8, 8:12].mean(dim=(1, 2))
        return torch.stack([spot, torch.zeros_like(spot)], dim=1)


def test_occlusion_points_at_the_region_the_answer_rests_on_and_restores_the_mode() -> None:
    image = torch.full((1, 16, 16), 100, dtype=torch.uint8)
    image[0, 4:8, 8:12] = 250  # a bright lesion on tissue: filling it with the tissue value lowers class 0
    image[0, 12:16, 0:4] = 250  # as bright, but the model ignores it
    model = _Region().train()
    saliency = occlusion_map(model, image, 0, torch.device("cpu"), patch=4, stride=2)
    assert saliency.shape == (16, 16) and saliency.max() == pytest.approx(1.0)
    lesion = np.zeros((16, 16), dtype=bool)
    lesion[4:8, 8:12] = True
    assert pointing_hit(saliency, lesion) is True
    assert not saliency[12:, :4].any()  # occluding what the model ignores changes nothing
    assert model.training
    assert not occlusion_map(model, image, 1, torch.device("cpu"), patch=4, stride=2).any()  # a flat class: no map


class _SkullAndBleed(nn.Module):
    """Class 0's logit rises with a bright crescent against the skull (rows 2-3, columns 2-9) and,
    ten times as steeply, with how intact the skull is far from it (rows 14-15): like a network that
    has learned what a normal inner table looks like."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bleed = x[:, 0, 2:4, 2:10].mean(dim=(1, 2)) - _normalised(200)
        skull = x[:, 0, 14:16, :].mean(dim=(1, 2)) - _normalised(255)
        return torch.stack([bleed + 10.0 * skull, torch.zeros_like(bleed)], dim=1)  # 0 (p 0.5) on the slice below


def _normalised(value: int) -> float:
    """A uint8 value of the first channel as the network sees it, through the one input path."""
    return float(to_model_input(torch.full((1, 1, 1, 1), value, dtype=torch.uint8), torch.device("cpu"))[0, 0, 0, 0])


def _skull_slice() -> torch.Tensor:
    image = torch.full((1, 16, 16), 100, dtype=torch.uint8)  # brain
    image[0, :2, :] = image[0, 14:, :] = 255  # skull, saturating the brain window
    image[0, 2:4, 2:10] = 200  # a subdural crescent under the inner table
    image[0, :, :1] = 0  # air beside the head
    return image


def _occlusion_inputs(model: nn.Module, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What ``model`` is shown while :func:`occlusion_map` draws class 0's map of ``image`` (4 px
    squares every 2 px): the unoccluded slice (C, H, W) and every occluded one (N, C, H, W)."""
    seen: list[torch.Tensor] = []
    handle = model.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach().clone()))
    try:
        occlusion_map(model, image, 0, torch.device("cpu"), patch=4, stride=2)
    finally:
        handle.remove()
    return seen[0][0], torch.cat(seen[1:])


def test_occlusion_leaves_air_and_bone_as_they_are() -> None:
    """Only soft tissue is occluded: cutting a gap in the skull (or painting tissue into the air) is a
    finding of its own, and a map drawn from it would point at the bone, not at the bleed."""
    image = _skull_slice()
    reference, batches = _occlusion_inputs(_SkullAndBleed(), image)
    kept = ((image[0] == 0) | (image[0] == 255)).expand_as(reference)
    assert torch.equal(batches[:, kept], reference[kept].expand(len(batches), -1))
    assert (batches[:, ~kept] != reference[~kept]).any()  # the tissue itself was occluded


def test_occlusion_of_a_bleed_against_the_skull_points_at_the_bleed() -> None:
    image = _skull_slice()
    saliency = occlusion_map(_SkullAndBleed(), image, 0, torch.device("cpu"), patch=4, stride=2)
    bleed = np.zeros((16, 16), dtype=bool)
    bleed[2:4, 2:10] = True
    assert pointing_hit(saliency, bleed, tolerance_px=2) is True  # squares spread the peak onto the bone above it
    assert not saliency[12:, :].any()  # the skull far from it is left alone, so it draws nothing


class _VentriclesAndBleed(nn.Module):
    """Class 0's logit rises with a bright bleed (rows 2-5, columns 2-5) and, ten times as steeply,
    with how dark the ventricles are (rows 9-12, columns 9-12): like a network that has learned what
    normal CSF spaces look like, and answers brain painted where CSF should be."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bleed = x[:, 0, 2:6, 2:6].mean(dim=(1, 2)) - _normalised(200)
        csf = _normalised(30) - x[:, 0, 9:13, 9:13].mean(dim=(1, 2))
        return torch.stack([bleed + 10.0 * csf, torch.zeros_like(bleed)], dim=1)


def _ventricle_slice() -> torch.Tensor:
    image = torch.full((1, 16, 16), 100, dtype=torch.uint8)  # brain
    image[0, 2:6, 2:6] = 200  # a hyperdense bleed
    image[0, 9:13, 9:13] = 30  # a ventricle: CSF, darker than brain
    image[0, 6:8, 13:15] = 110  # grey matter a little brighter than the median
    return image


def test_occlusion_lowers_only_what_is_brighter_than_brain() -> None:
    """Each occluded square lowers its hyperdense soft tissue to the median soft tissue and leaves
    CSF, air and bone, and anything at or below the median, as they were."""
    image = _ventricle_slice()
    image[0, :, :1] = 0  # air
    image[0, 15:, :] = 255  # bone
    reference, batches = _occlusion_inputs(_VentriclesAndBleed(), image)
    brighter = ((image[0] > 100) & (image[0] < 255)).expand_as(reference)
    assert torch.equal(batches[:, ~brighter], reference[~brighter].expand(len(batches), -1))
    first = brighter[0]  # the brain window, as the network sees it
    changed = batches[:, 0, first] != reference[0, first]
    assert changed.any(dim=0).all()  # every hyperdense pixel is lowered by some square...
    lowered_to = batches[:, 0, first][changed]
    assert torch.allclose(lowered_to, torch.full_like(lowered_to, _normalised(100)))  # ...to the median, nothing else


def test_occlusion_of_a_bleed_beside_the_ventricles_points_at_the_bleed() -> None:
    """Filling the ventricles with brain (every soft tissue pixel occluded, as maps were drawn
    before) moves the peak onto them; lowering only what is brighter than brain keeps it on the
    bleed."""
    image = _ventricle_slice()
    bleed = np.zeros((16, 16), dtype=bool)
    bleed[2:6, 2:6] = True
    ventricle = np.zeros((16, 16), dtype=bool)
    ventricle[9:13, 9:13] = True
    filled = occlusion_map(_VentriclesAndBleed(), image, 0, torch.device("cpu"), patch=4, stride=2,
                           lower="soft_tissue")
    assert pointing_hit(filled, ventricle) is True and pointing_hit(filled, bleed, tolerance_px=2) is False
    saliency = occlusion_map(_VentriclesAndBleed(), image, 0, torch.device("cpu"), patch=4, stride=2)
    assert pointing_hit(saliency, bleed) is True
    assert not saliency[9:13, 9:13].any()  # the ventricle is not occluded, so it draws nothing


def test_occlusion_refuses_an_unknown_fill() -> None:
    with pytest.raises(ValueError, match="hyperdense"):
        occlusion_map(_Region(), torch.zeros((1, 8, 8), dtype=torch.uint8), 0, torch.device("cpu"), patch=4,
                      stride=2, lower="mirror")
