"""Patient sequences, the patient-level split, window indices and datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hemo_model.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    SliceDataset,
    WindowDataset,
    load_split,
    patients_by_role,
    window_indices,
)
from hemo_model.roles import RoleSpec
from hemo_model.transforms import train_augmentation


def test_window_indices_clamp_at_edges() -> None:
    assert window_indices(10, 0) == [0, 0, 0, 1, 2]
    assert window_indices(10, 1) == [0, 0, 1, 2, 3]
    assert window_indices(10, 5) == [3, 4, 5, 6, 7]
    assert window_indices(10, 9) == [7, 8, 9, 9, 9]
    assert window_indices(1, 0) == [0, 0, 0, 0, 0]
    assert window_indices(10, 4, width=1) == [4]


def test_load_split_orders_slices_by_k_not_by_name(tiny_data: Path) -> None:
    patients = load_split(tiny_data, "train")
    assert len(patients) == 4
    for patient in patients:
        ks = [int(p.stem.split("_")[1]) for p in patient.paths]
        assert ks == list(range(len(patient)))  # 0,1,2,...,10 not 0,1,10,11,...
        assert patient.labels is not None and patient.labels.shape == (len(patient), 5)
    test = load_split(tiny_data, "test")
    assert len(test) == 2 and all(p.labels is None for p in test)


def test_patients_by_role_covers_everyone_once(tiny_data: Path) -> None:
    patients = load_split(tiny_data, "train")
    spec = RoleSpec("s", 0.25, 0.25)
    grouped = patients_by_role(patients, spec)
    assert sorted(p.dirname for g in grouped.values() for p in g) == sorted(p.dirname for p in patients)
    assert patients_by_role(list(reversed(patients)), spec) == grouped


def test_missing_labels_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train.csv not found"):
        load_split(tmp_path, "train")
    with pytest.raises(DataError, match="no patient folders"):
        load_split(tmp_path, "test")


def test_slice_and_window_items(tiny_data: Path) -> None:
    patients = load_split(tiny_data, "train")[:1]
    slices = SliceDataset(patients, image_size=32)
    image, target = slices[0]
    assert image.shape == (3, 32, 32) and target.shape == (5,)
    raw = image * torch.tensor(IMAGENET_STD).view(3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    assert torch.allclose(raw[0], raw[1], atol=1e-6) and torch.allclose(raw[1], raw[2], atol=1e-6)  # gray as 3 channels
    windows = WindowDataset(patients, image_size=32)
    stack, centre_target = windows[0]
    assert stack.shape == (5, 3, 32, 32)
    assert torch.equal(stack[0], stack[2]) and torch.equal(stack[1], stack[2])  # k=0 edge replicated
    assert torch.equal(stack[2], image) and torch.equal(centre_target, target)
    assert torch.equal(windows[3][0][2], slices[3][0])


def test_augmentation_is_shared_across_a_window(tiny_data: Path) -> None:
    patients = load_split(tiny_data, "train")[:1]
    torch.manual_seed(0)
    plain = WindowDataset(patients, 32)[0][0]  # k=0: slices 0,0,0,1,2 -> first three identical
    torch.manual_seed(1)
    augmented = WindowDataset(patients, 32, transform=train_augmentation())[0][0]
    assert not torch.equal(augmented, plain)
    assert torch.equal(augmented[0], augmented[1]) and torch.equal(augmented[1], augmented[2])


def test_cache_returns_identical_pixels(tiny_data: Path) -> None:
    patients = load_split(tiny_data, "train")[:1]
    cached = SliceDataset(patients, 32, cache=True)
    assert torch.equal(cached[2][0], cached[2][0]) and torch.equal(cached[2][0], SliceDataset(patients, 32)[2][0])
    assert np.isfinite(cached[2][0].numpy()).all()
