"""Patient sequences over the DLCV layout, the patient-level split, and PyTorch datasets.

Slices are read as 8-bit grayscale (or three CT windows as RGB), resized to ``image_size`` and
handed out as uint8; the device turns them into what a torchvision ResNet expects
(:mod:`hemo_model.transforms`). Items are single slices (stage 1) or 5-slice windows centred on
slice k with indices clamped at the sequence ends (stage 2). Patients are grouped by role
(train/val/gate, :mod:`hemo_model.roles`), never split by slice: neighbouring slices of one scan
are nearly identical, so a slice split would leak.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hemo_model import CLASSES, images
from hemo_model.layout import LABELS_FILE, DataError, inside, list_split, parse_slice_name, read_label_rows
from hemo_model.roles import ROLES, RoleSpec, role_of

@dataclass(frozen=True)
class PatientSequence:
    """One scan: slice paths in scan order (k = 0..n-1) and, for labelled data, (n, 5) labels."""

    dirname: str
    paths: tuple[Path, ...]
    labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def slice_ids(self) -> list[str]:
        return [p.name for p in self.paths]


def load_split(root: Path, split: str = "train") -> list[PatientSequence]:
    """Patients of ``split``: labelled from ``train.csv`` for train, from the folder for test."""
    if split == "train":
        return _load_labelled(root)
    return load_folder(root / split)


def load_folder(folder: Path) -> list[PatientSequence]:
    """Unlabelled patients from a folder of ``ID_<hash>/<hash>_<k>.jpg`` (e.g. ``data/test``)."""
    listing = list_split(folder.parent, folder.name)
    if not listing:
        raise DataError(f"{folder} holds no patient folders with images; check the path (--data)")
    patients = []
    for dirname, names in listing.items():
        ordered = sorted((parsed.k, n) for n in names if (parsed := parse_slice_name(n)) is not None)
        if not ordered:
            raise DataError(f"{folder / dirname} holds no <hash>_<k>.jpg slices")
        patients.append(PatientSequence(dirname, tuple(inside(folder, dirname, n) for _, n in ordered)))
    return patients


def _load_labelled(root: Path) -> list[PatientSequence]:
    path = root / LABELS_FILE
    if not path.is_file():
        raise DataError(f"{path} not found; the data folder must hold train.csv (run `hemo validate` first)")
    header, label_rows = read_label_rows(path)
    missing_columns = [c for c in ("dirname", "ID", *CLASSES) if c not in header]
    if missing_columns:
        raise DataError(f"{path}: header {','.join(header)!r} lacks {missing_columns}; run `hemo validate`")
    rows: dict[str, list[tuple[int, str, list[float]]]] = {}
    for row in label_rows:
        values, line = row.values, row.line
        parsed = parse_slice_name(values["ID"])
        if parsed is None:
            raise DataError(f"{path} row {line}: bad ID {values['ID']!r}; run `hemo validate` for a full report")
        try:
            labels = [float(values[c]) for c in CLASSES]
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path} row {line}: labels must be 0/1 ({exc}); run `hemo validate`") from exc
        rows.setdefault(values["dirname"], []).append((parsed.k, values["ID"], labels))
    patients = []
    for dirname in sorted(rows):
        ordered = sorted(rows[dirname])
        try:
            paths = tuple(inside(root, "train", dirname, name) for _, name, _ in ordered)
        except DataError as exc:
            raise DataError(f"{path}: {exc}") from exc
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{missing[0]} is listed in {path} but missing ({len(missing)} missing in {dirname}); "
                            "restore the images (dvc pull) or run `hemo validate`")
        patients.append(PatientSequence(dirname, paths, np.array([lab for *_, lab in ordered], dtype=np.float32)))
    if not patients:
        raise DataError(f"{path} has no rows")
    return patients


def patients_by_role(patients: Sequence[PatientSequence], spec: RoleSpec) -> dict[str, list[PatientSequence]]:
    """Labelled patients grouped by their stable role (see :mod:`hemo_model.roles`), each list
    sorted by patient folder name."""
    grouped: dict[str, list[PatientSequence]] = {role: [] for role in ROLES}
    for patient in sorted(patients, key=lambda p: p.dirname):
        grouped[role_of(patient.dirname, spec)].append(patient)
    return grouped


def read_slice(path: Path, image_size: int) -> np.ndarray:
    """8-bit grayscale slice resized to ``image_size`` (uint8, H x W), checked by
    :func:`hemo_model.images.read` (format by content, pixel budget, mode)."""
    return images.read(path, image_size)


def read_pixels(path: Path, image_size: int, channels: int = 1) -> np.ndarray:
    """One slice as the datasets hand it out: uint8 (channels, H, W). One channel is the gray
    slice; three are the three CT windows of an RGB PNG (model.input windows3)."""
    if channels == 1:
        return images.read(path, image_size)[None]
    return np.ascontiguousarray(images.read(path, image_size, modes=("RGB",)).transpose(2, 0, 1))


def window_indices(n: int, k: int, width: int = 5) -> list[int]:
    """Indices of the ``width``-slice window centred on ``k``, clamped at the sequence ends."""
    half = width // 2
    return [min(max(i, 0), n - 1) for i in range(k - half, k + half + 1)]


class SliceCache:
    """Every slice of a data set decoded and resized once, as one uint8 array (N, C, H, W).

    Built before any DataLoader worker starts, so workers share its pages (fork, copy-on-write,
    read only) instead of each filling a private copy; with a ``folder`` it is a memory-mapped
    file there, reused by later runs at the same image size (at 512 px a large set does not fit
    in RAM, but the page cache serves it)."""

    def __init__(self, array: np.ndarray, index: dict[Path, int]) -> None:
        self.array = array
        self.index = index

    def __len__(self) -> int:
        return len(self.index)

    def get(self, path: Path) -> np.ndarray:
        return self.array[self.index[path]]

    @classmethod
    def build(cls, paths: Sequence[Path], image_size: int, channels: int = 1, folder: Path | None = None,
              threads: int = 4, progress: bool = False) -> SliceCache:
        from concurrent.futures import ThreadPoolExecutor

        unique = sorted(set(paths))
        index = {path: i for i, path in enumerate(unique)}
        shape = (len(unique), channels, image_size, image_size)
        target = None
        if folder is not None:
            import hashlib

            digest = hashlib.sha256()
            for path in unique:
                stat = path.stat()
                digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            target = folder / f"slices_{digest.hexdigest()[:16]}_{channels}x{image_size}.u8"
            if target.is_file() and target.stat().st_size == int(np.prod(shape)):
                return cls(np.memmap(target, dtype=np.uint8, mode="r", shape=shape), index)
            folder.mkdir(parents=True, exist_ok=True)
            array = np.memmap(target.with_suffix(".partial"), dtype=np.uint8, mode="w+", shape=shape)
        else:
            array = np.empty(shape, dtype=np.uint8)

        def fill(i: int) -> None:
            array[i] = read_pixels(unique[i], image_size, channels)

        with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL releases the GIL while decoding
            jobs = pool.map(fill, range(len(unique)))
            if progress:
                from tqdm import tqdm

                jobs = tqdm(jobs, total=len(unique), desc=f"caching {image_size}px slices", unit="slice", leave=False,
                            disable=None)  # bars on a terminal only; logs get the summary lines
            for _ in jobs:
                pass
        if target is not None:
            array.flush()
            target.with_suffix(".partial").replace(target)
            return cls(np.memmap(target, dtype=np.uint8, mode="r", shape=shape), index)
        return cls(array, index)


class _SliceSource(Dataset):
    """Shared slice reading: uint8 pixels, from a :class:`SliceCache` when there is one.

    Items leave the dataset as uint8: normalisation, the 3-channel expansion and augmentation
    happen on the device (:func:`hemo_model.transforms.to_model_input`), so a 512 px slice
    crosses processes and the bus as 256 KB instead of a 3 MB float tensor."""

    def __init__(self, patients: Sequence[PatientSequence], image_size: int, cache: SliceCache | bool = False,
                 channels: int = 1) -> None:
        self.patients = list(patients)
        self.image_size = image_size
        self.channels = channels
        self.items = [(p, k) for p, patient in enumerate(self.patients) for k in range(len(patient))]
        if cache is True:
            cache = SliceCache.build([path for p in self.patients for path in p.paths], image_size, channels)
        self.cache: SliceCache | None = cache or None

    def __len__(self) -> int:
        return len(self.items)

    def _pixels(self, path: Path) -> np.ndarray:
        if self.cache is not None:
            return self.cache.get(path)
        return read_pixels(path, self.image_size, self.channels)

    def _target(self, patient: PatientSequence, k: int) -> torch.Tensor:
        if patient.labels is None:
            return torch.full((len(CLASSES),), float("nan"))
        return torch.from_numpy(patient.labels[k])


class SliceDataset(_SliceSource):
    """Single slices (stage 1, and inference): uint8 ``(C, H, W)`` and the slice's 5 labels."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, k = self.items[index]
        patient = self.patients[p]
        return torch.from_numpy(np.array(self._pixels(patient.paths[k]))), self._target(patient, k)


class WindowDataset(_SliceSource):
    """5-slice windows (stage 2): uint8 ``(5, C, H, W)`` around slice k and the labels of slice k."""

    def __init__(self, *args, width: int = 5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.width = width

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, k = self.items[index]
        patient = self.patients[p]
        stack = np.stack([self._pixels(patient.paths[i]) for i in window_indices(len(patient), k, self.width)])
        return torch.from_numpy(stack), self._target(patient, k)
