"""Patient sequences, the patient-level split, window indices and datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from hemo_model.data.cache import SliceCache
from hemo_model.data.datasets import SliceDataset, WindowDataset, window_indices
from hemo_model.data.images import read_slice
from hemo_model.data.layout import DataError
from hemo_model.data.patients import load_split, patients_by_role
from hemo_model.data.roles import RoleSpec


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


def test_slice_and_window_items_are_uint8(tiny_data: Path) -> None:
    patients = load_split(tiny_data, "train")[:1]
    slices = SliceDataset(patients, image_size=32)
    image, target = slices[0]
    assert image.shape == (1, 32, 32) and image.dtype == torch.uint8 and target.shape == (5,)
    assert torch.equal(image[0], torch.from_numpy(read_slice(patients[0].paths[0], 32)))
    windows = WindowDataset(patients, image_size=32)
    stack, centre_target = windows[0]
    assert stack.shape == (5, 1, 32, 32) and stack.dtype == torch.uint8
    assert torch.equal(stack[0], stack[2]) and torch.equal(stack[1], stack[2])  # k=0 edge replicated
    assert torch.equal(stack[2], image) and torch.equal(centre_target, target)
    assert torch.equal(windows[3][0][2], slices[3][0])


def test_cache_returns_identical_pixels_and_is_reused_from_disk(tiny_data: Path, tmp_path: Path) -> None:
    patients = load_split(tiny_data, "train")[:2]
    paths = [p for patient in patients for p in patient.paths]
    in_memory = SliceDataset(patients, 32, cache=True)
    plain = SliceDataset(patients, 32)
    assert all(torch.equal(in_memory[i][0], plain[i][0]) for i in range(len(plain)))
    built = SliceCache.build(paths, 32, folder=tmp_path)
    (cache_file,) = tmp_path.glob("slices_*_1x32.u8")
    stamp = cache_file.stat().st_mtime_ns
    reused = SliceCache.build(paths, 32, folder=tmp_path)  # the same files at the same size: opened, not rebuilt
    assert cache_file.stat().st_mtime_ns == stamp and isinstance(reused.array, np.memmap)
    assert np.array_equal(np.asarray(reused.array), np.asarray(built.array))
    on_disk = SliceDataset(patients, 32, cache=reused)
    assert all(torch.equal(on_disk[i][0], plain[i][0]) for i in range(len(plain)))
    SliceCache.build(paths, 48, folder=tmp_path)  # another size is another cache
    assert len(list(tmp_path.glob("slices_*.u8"))) == 2


def test_item_labels_are_the_items_targets_in_order(tiny_data: Path) -> None:
    patients = load_split(tiny_data, "train")[:2]
    for dataset in (SliceDataset(patients, image_size=32), WindowDataset(patients, image_size=32)):
        labels = dataset.item_labels()
        assert labels.shape == (len(dataset), 5)
        for index in (0, len(dataset) // 2, len(dataset) - 1):
            assert np.array_equal(labels[index], dataset[index][1].numpy())
    assert SliceDataset([], image_size=32).item_labels().shape == (0, 5)
