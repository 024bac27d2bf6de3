"""Patient sequences over the DLCV layout, the patient-level split, and PyTorch datasets.

Slices are read as 8-bit grayscale (or three CT windows as RGB), resized to ``image_size`` and
handed out as uint8; the device turns them into what a torchvision ResNet expects
(:mod:`hemo_model.transforms`). Items are single slices (stage 1) or 5-slice windows centred on
slice k with indices clamped at the sequence ends (stage 2). Patients are grouped by role
(train/val/gate, :mod:`hemo_model.roles`), never split by slice: neighbouring slices of one scan
are nearly identical, so a slice split would leak.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

import numpy as np
import torch
from torch.utils.data import Dataset

from hemo_model import CLASSES, images
from hemo_model.layout import (
    LABELS_FILE,
    DataError,
    confined,
    inside,
    list_split,
    parse_slice_name,
    read_label_rows,
)
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
    return load_folder(root / split, data_root=root)


def load_folder(folder: Path, data_root: Path | None = None) -> list[PatientSequence]:
    """Unlabelled patients from a folder of ``ID_<hash>/<hash>_<k>.jpg`` (e.g. ``data/test``).

    With ``data_root`` (the data folder of the settings), a ``folder`` named under it must also
    really be inside it (:func:`hemo_model.layout.confined`): ``data/test`` linked elsewhere is
    refused, not read. Patient folders and slices never leave ``folder`` either way."""
    if data_root is not None:
        confined(folder, data_root)
    listing = list_split(folder.parent, folder.name)
    if not listing:
        raise DataError(f"{folder} holds no patient folders with images; check the path (--data)")
    patients = []
    for dirname, names in listing.items():
        inside(folder, dirname)  # a plain name (no newline, no '..') that stays inside, before it is printed
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


CACHE_FORMAT = 2
"""Version of the on-disk slice cache; part of every cache file's key. Raise it whenever the bytes
a cache holds for the same slices would change (decoding, resizing, dtype, layout)."""

log = logging.getLogger(__name__)


class SliceCache:
    """Every slice of a data set decoded and resized once, as one uint8 array (N, C, H, W).

    Built before any DataLoader worker starts, so workers share its pages (fork, copy-on-write,
    read only) instead of each filling a private copy; with a ``folder`` it is a memory-mapped
    file there, reused by later runs at the same image size (at 512 px a large set does not fit
    in RAM, but the page cache serves it).

    The cache folder is trusted no more than it must be: a cache file is found by a key over what
    no other process can keep equal while changing a slice (device, inode, size, mtime and ctime,
    which ``utime`` cannot set; image size, channels, :data:`CACHE_FORMAT`), is reused only if it is
    a regular file (not a symlink) of this user, not writable by group or others, of the exact
    size, and is written under a random name (``mkstemp``: O_CREAT|O_EXCL, mode 0600) that is then
    renamed over the target, so a planted symlink is never written through nor read through."""

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
        unique = sorted(set(paths))
        index = {path: i for i, path in enumerate(unique)}
        shape = (len(unique), channels, image_size, image_size)

        def fill(array: np.ndarray) -> None:
            _decode_into(array, unique, image_size, channels, threads, progress)

        if folder is None or not unique:
            array = np.empty(shape, dtype=np.uint8)
            fill(array)
            return cls(array, index)
        target = folder / f"slices_{cache_key(unique, image_size, channels)}_{channels}x{image_size}.u8"
        cached = _open_trusted(target, int(np.prod(shape)))
        if cached is not None:
            with cached:
                return cls(np.memmap(cached, dtype=np.uint8, mode="r", shape=shape), index)
        return cls(_write_cache(target, shape, fill), index)


def cache_key(paths: Sequence[Path], image_size: int, channels: int) -> str:
    """Hex key of a slice cache: the cache format, the array's shape and, per slice, its real path,
    device, inode, size, mtime and ctime. A slice rewritten in place with its old size and mtime
    (``os.utime``) still gets a new ctime, which only the kernel sets."""
    import hashlib

    digest = hashlib.sha256(f"hemo slice cache v{CACHE_FORMAT}\0{len(paths)}x{channels}x{image_size}\n".encode())
    for path in paths:
        stat = os.stat(path)
        digest.update(os.fsencode(path.resolve()))
        digest.update(f"\0{stat.st_dev}\0{stat.st_ino}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ctime_ns}\n"
                      .encode())
    return digest.hexdigest()[:32]


def _decode_into(array: np.ndarray, paths: Sequence[Path], image_size: int, channels: int, threads: int,
                 progress: bool) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def fill(i: int) -> None:
        array[i] = read_pixels(paths[i], image_size, channels)

    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL releases the GIL while decoding
        jobs = pool.map(fill, range(len(paths)))
        if progress:
            from tqdm import tqdm

            jobs = tqdm(jobs, total=len(paths), desc=f"caching {image_size}px slices", unit="slice", leave=False,
                        disable=None)  # bars on a terminal only; logs get the summary lines
        for _ in jobs:
            pass


def _open_trusted(target: Path, size: int) -> BinaryIO | None:
    """``target`` opened for reading if it may be used as this cache, else None (the reason logged
    once, naming the cache file only). Opened without following a symlink and without blocking
    (a planted FIFO), then judged on what was opened (fstat), so nothing can be swapped in
    between the check and the use."""
    try:
        descriptor = os.open(target, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else f"it cannot be opened ({exc.strerror})"
        log.warning("slice cache %s not reused: %s; rebuilding it", target.name, why)
        return None
    why = _distrust(os.fstat(descriptor), size)
    if why:
        os.close(descriptor)
        log.warning("slice cache %s not reused: %s; rebuilding it", target.name, why)
        return None
    return os.fdopen(descriptor, "rb")


def _distrust(stat: os.stat_result, size: int) -> str:
    """Why a cache file must not be used ("" if it may)."""
    if not S_ISREG(stat.st_mode):
        return "it is not a regular file"
    if stat.st_uid != os.geteuid():
        return f"it belongs to another user (uid {stat.st_uid})"
    if stat.st_mode & 0o022:
        return f"it is writable by group or others (mode {stat.st_mode & 0o777:o})"
    if stat.st_size != size:
        return f"it holds {stat.st_size} bytes, not {size}"
    return ""


def _write_cache(target: Path, shape: tuple[int, ...], fill: Callable[[np.ndarray], None]) -> np.ndarray:
    """Fill a new cache file under a random name (created exclusively, mode 0600) and rename it
    over ``target``; return it mapped read-only from the file this process created."""
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    try:
        with os.fdopen(descriptor, "r+b") as handle:
            os.ftruncate(handle.fileno(), int(np.prod(shape)))
            array = np.memmap(handle, dtype=np.uint8, mode="r+", shape=shape)
            fill(array)
            array.flush()
            del array
            cached = np.memmap(handle, dtype=np.uint8, mode="r", shape=shape)
    except BaseException:
        Path(partial).unlink(missing_ok=True)
        raise
    try:
        os.replace(partial, target)  # replaces a planted symlink itself, never what it points to
    except OSError as exc:
        Path(partial).unlink(missing_ok=True)  # the mapping stays valid for this run
        log.warning("slice cache %s cannot be stored (%s); using it for this run only", target.name,
                    exc.strerror or type(exc).__name__)
    return cached


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
