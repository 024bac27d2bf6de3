"""Where an import writes: the data folder (all or nothing), the salt, the local mapping file.

* The data folder is replaced, never edited: a staging folder beside it starts as a hard-linked
  copy of the current one (no image is copied; linked files are only ever replaced, never written
  into), receives the new series and the merged ``train.csv``, and is then renamed into place.
  An interrupted import leaves the old data folder as it was, never a half-written one and never
  none: the swap is atomic where the OS offers it, and the old folder is put back otherwise.
* The salt that names series lives outside the data folder: ``HEMO_DICOM_SALT`` or a local file
  created on first use (mode 0600, git-ignored). Keep it: the same salt gives a re-imported series
  the same name, which is how a second import of the same series is refused.
* The mapping file (pipeline names -> UIDs) is written only on request and never inside the data
  or reports folders.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from hemo_model.data.layout import LABELS_FILE, SPLITS, labelled_patients
from hemo_pipeline.services.errors import UserError
from hemo_pipeline.services.folder_swap import replacing

if TYPE_CHECKING:  # numpy and PIL are imported where used: `hemo --help` imports this module
    import numpy as np

SALT_ENV = "HEMO_DICOM_SALT"
DEFAULT_SALT_FILE = Path(".hemo-dicom-salt")


def is_inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def resolve_salt(salt_file: Path, forbidden: dict[str, Path], existing: int = 0,
                 allow_new: bool = False) -> tuple[str, str]:
    """(salt, where it came from). ``forbidden`` names folders the salt file must not be in.

    A new salt is made only for a data folder without patients (``existing`` == 0) or when asked
    (``allow_new``): a lost salt file silently replaced would rename every series on the next
    import, so earlier training scans would come back under new names and roles, unseen by the
    gate's leak check (issue 18)."""
    from_env = os.environ.get(SALT_ENV, "")
    if from_env:
        return from_env, f"${SALT_ENV}"
    for what, folder in forbidden.items():
        if is_inside(salt_file, folder):
            raise UserError(f"salt file {salt_file} is inside the {what} folder {folder}: the salt must never be "
                            "shipped with the data; keep it elsewhere (--salt-file) or set HEMO_DICOM_SALT")
    if salt_file.is_file():
        salt = salt_file.read_text().strip()
        if not salt:
            raise UserError(f"salt file {salt_file} is empty; delete it to have a new one made, or restore it")
        return salt, str(salt_file)
    if existing and not allow_new:
        raise UserError(f"salt file {salt_file} not found, but the data folder already holds {existing} patients: a "
                        "new salt would import the same series again under new names (and roles); restore the salt "
                        "file or set HEMO_DICOM_SALT, or pass --new-salt if those patients never came from "
                        "`hemo import-dicom` (e.g. `hemo synth`)")
    salt_file.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(salt_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    return salt_file.read_text().strip(), f"{salt_file} (new)"


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy instead
        shutil.copy2(src, dst)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A folder to build the new data set in, starting as a hard-linked copy of ``out``; swapped in
    for ``out`` when the block succeeds (:mod:`hemo_pipeline.services.folder_swap`: one atomic exchange where
    the OS offers it; never both versions lost, whatever interrupts it)."""
    target = out.resolve()  # a symlinked data folder: replace what it points to, keep the link
    with replacing(target, prefix=f".{target.name}-import-", seed=_linked_copy) as work:
        yield work


def _linked_copy(old: Path, new: Path) -> None:
    shutil.copytree(old, new, copy_function=_link_or_copy, symlinks=True)


def existing_patients(out: Path) -> set[str]:
    """Patient folders already in ``out`` (train/, test/ and train.csv)."""
    found: set[str] = set()
    for split in SPLITS:
        folder = out / split
        if folder.is_dir():
            found.update(p.name for p in folder.iterdir())
    if (out / LABELS_FILE).is_file():
        found.update(labelled_patients(out))
    return found


def save_slice(path_stem: Path, pixels: np.ndarray) -> str:
    """Write one slice with no metadata (no EXIF, no text chunks): 8-bit gray as JPEG (the DLCV
    format), three windows as a lossless RGB PNG. Returns the file name."""
    image = Image.fromarray(np.ascontiguousarray(pixels))
    if pixels.ndim == 2:
        path = path_stem.with_suffix(".jpg")
        image.save(path, format="JPEG", quality=95)
    else:
        path = path_stem.with_suffix(".png")
        image.save(path, format="PNG", compress_level=1)  # lossless at any level; 1 is ~4x faster than 6, ~3% larger
    return path.name
