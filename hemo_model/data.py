"""Patient sequences over the DLCV layout, the patient-level split, and PyTorch datasets.

Slices are read as 8-bit grayscale, resized to ``image_size`` and repeated to 3 channels (what
a torchvision ResNet expects). Items are single slices (stage 1) or 5-slice windows centred on
slice k with indices clamped at the sequence ends (stage 2). Patients are grouped by role
(train/val/gate, :mod:`hemo_model.roles`), never split by slice: neighbouring slices of one scan
are nearly identical, so a slice split would leak.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from hemo_model import CLASSES, images
from hemo_model.layout import LABELS_FILE, DataError, inside, list_split, parse_slice_name, read_label_rows
from hemo_model.roles import ROLES, RoleSpec, role_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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


def normalize(images: torch.Tensor) -> torch.Tensor:
    """[0, 1] grayscale (..., 1 or 3, H, W) -> ImageNet-normalised 3 channels."""
    if images.shape[-3] == 1:
        images = images.expand(*images.shape[:-3], 3, *images.shape[-2:])
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype).view(3, 1, 1)
    return (images - mean) / std


def window_indices(n: int, k: int, width: int = 5) -> list[int]:
    """Indices of the ``width``-slice window centred on ``k``, clamped at the sequence ends."""
    half = width // 2
    return [min(max(i, 0), n - 1) for i in range(k - half, k + half + 1)]


class _SliceSource(Dataset):
    """Shared slice reading with an optional in-memory cache of resized uint8 slices."""

    def __init__(self, patients: Sequence[PatientSequence], image_size: int, cache: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.patients = list(patients)
        self.image_size = image_size
        self.transform = transform
        self.items = [(p, k) for p, patient in enumerate(self.patients) for k in range(len(patient))]
        self._cache: dict[Path, np.ndarray] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.items)

    def _pixels(self, path: Path) -> np.ndarray:
        if self._cache is None:
            return read_slice(path, self.image_size)
        pixels = self._cache.get(path)
        if pixels is None:
            pixels = self._cache[path] = read_slice(path, self.image_size)
        return pixels

    def _stack(self, patient: PatientSequence, ks: Sequence[int]) -> torch.Tensor:
        """(len(ks), 3, H, W) normalised; one augmentation draw shared by the whole stack."""
        raw = np.stack([self._pixels(patient.paths[k]) for k in ks])
        images = torch.from_numpy(raw).float().div_(255.0)  # (S, H, W): slices as channels
        if self.transform is not None:
            images = self.transform(images)  # same geometry for every slice of a window
        return normalize(images.unsqueeze(1))

    def _target(self, patient: PatientSequence, k: int) -> torch.Tensor:
        if patient.labels is None:
            return torch.full((len(CLASSES),), float("nan"))
        return torch.from_numpy(patient.labels[k])


class SliceDataset(_SliceSource):
    """Single slices (stage 1, and inference): ``(3, H, W)`` image and its 5 labels."""

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, k = self.items[index]
        patient = self.patients[p]
        return self._stack(patient, [k])[0], self._target(patient, k)


class WindowDataset(_SliceSource):
    """5-slice windows (stage 2): ``(5, 3, H, W)`` around slice k and the labels of slice k."""

    def __init__(self, *args, width: int = 5, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.width = width

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        p, k = self.items[index]
        patient = self.patients[p]
        return self._stack(patient, window_indices(len(patient), k, self.width)), self._target(patient, k)
