"""Replace a whole folder at once: build the new version beside it, then swap it in.

Used where a step rewrites a folder that someone may be reading or that must survive an
interrupt: the data folder of `hemo import-dicom` (:func:`hemo_pipeline.services.dicom_output.staged`) and the
GX Data Docs of `hemo validate`. The promise: whatever fails or is interrupted (an exception, a
KeyboardInterrupt, at any point), the folder is afterwards the old version or the new one, whole,
and the old version is never deleted unless the new one is in place.

The swap is one ``renameat2(..., RENAME_EXCHANGE)`` call where Linux and the file system offer it
(atomic: no moment without the folder). Elsewhere it is two renames (old aside, new in); an
interrupt between them is repaired by :func:`replacing`, which moves the old version back.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NOT_OFFERED = {errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP}


def exchange(first: Path, second: Path) -> bool:
    """Atomically swap two existing paths (Linux ``renameat2`` with ``RENAME_EXCHANGE``).

    True when swapped; False when this OS, C library or file system does not offer the exchange
    (the caller then falls back to two renames); any other failure raises :class:`OSError`."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28, musl >= 1.2.3
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _NOT_OFFERED:
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def swap_in(new: Path, target: Path, aside: Path) -> None:
    """Make the folder ``new`` the folder at ``target``. The previous ``target``, if any, ends up
    at ``new`` (after an exchange) or at ``aside`` (after two renames); both lie in the scratch
    folder that the caller removes once ``target`` is in place."""
    if not os.path.lexists(target):
        os.rename(new, target)
    elif not exchange(new, target):
        os.rename(target, aside)
        os.rename(new, target)  # an interrupt just before this line is repaired by settle()


def settle(target: Path, aside: Path) -> bool:
    """After :func:`swap_in` (done, failed or interrupted): put the old version back if ``target``
    is missing while it lies aside. True when the scratch folder may be deleted: a version is at
    ``target``, or there never was an old one to lose."""
    if os.path.lexists(target):
        return True
    if not os.path.lexists(aside):
        return True
    try:
        os.rename(aside, target)
    except OSError as exc:  # keep the scratch folder: the old version is still in it
        print(f"warning: could not put {target} back ({exc.strerror}); the previous version is in {aside}",
              file=sys.stderr)
        return False
    return True


@contextlib.contextmanager
def replacing(target: Path, prefix: str, seed: Callable[[Path, Path], None] | None = None) -> Iterator[Path]:
    """A folder in which to build the new version of ``target`` (a scratch folder beside it, on the
    same file system); swapped in when the block succeeds, thrown away when it does not.

    ``seed(old, new)`` fills the new folder from the current version first (e.g. hard links);
    without it the new folder starts empty. ``prefix`` names the scratch folder (``.<prefix>*``)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    work, aside = scratch / "new", scratch / "old"
    try:
        if seed is not None and target.exists():
            seed(target, work)
        else:
            work.mkdir()
        yield work
        swap_in(work, target, aside)
    finally:
        if settle(target, aside):
            shutil.rmtree(scratch, ignore_errors=True)
