"""The decoded-slice cache: every slice of a data set decoded and resized once (uint8).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from stat import S_ISREG
from typing import BinaryIO

import numpy as np

from hemo_model.data.images import read_pixels

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
