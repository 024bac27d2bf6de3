"""Where each labelled lesion is, per slice: the answer a saliency map is checked against.

```
<root>/masks/ID_<hash>/<hash>_<k>.png   8-bit grayscale square PNG (the slice's size, or any square size:
                                        it is rescaled to the model's size like its slice); bit i of a pixel
                                        set where the lesion of CLASSES[i] is (1 ich, 2 ivh, 4 sah, 8 sdh, 16 edh)
```
Optional, for the labelled split only. A patient folder under ``masks/`` means the patient's
lesions were outlined: a slice without a file there shows none. A patient without a folder was not
outlined, and no saliency check uses it; since git and DVC keep no empty folder, a patient without
any lesion has none either, and its flags are not checked (there is no lesion to point at).
`hemo synth` writes the phantom's masks (what it drew, for the classes a slice is labelled with);
a team with segmentations of its own (from a segmentation data set or a reader's outlines) writes
them in this form, and `hemo evaluate` then plays the pointing game on its gate patients
(:mod:`hemo_model.inference.pointing`).

One PNG per positive slice, bits rather than one file per class: five outlines of a slice stay one
file, lossless, and readable by any imaging tool (the values 1-31 look black in a viewer: stretch
the contrast).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from hemo_model import CLASSES
from hemo_model.data.images import ImageError, read
from hemo_model.data.layout import DataError, inside

MASKS_DIR = "masks"
MAX_CODE = (1 << len(CLASSES)) - 1


def mask_name(slice_name: str) -> str:
    """``'ab12_7.jpg'`` -> ``'ab12_7.png'``: one mask file per slice, lossless whatever the slice is."""
    return f"{Path(slice_name).stem}.png"


def encode(masks: Mapping[str, np.ndarray], classes: Sequence[str] = CLASSES) -> np.ndarray:
    """One uint8 image from per-class boolean masks of one shape (bit i for ``classes[i]``; a
    class missing from ``masks`` has no lesion)."""
    unknown = set(masks) - set(classes)
    if unknown:
        raise ValueError(f"unknown classes {sorted(unknown)}; masks are per class of {list(classes)}")
    shapes = {np.shape(m) for m in masks.values()}
    if len(shapes) > 1:
        raise ValueError(f"the masks of one slice differ in shape: {sorted(shapes)}")
    shape = shapes.pop() if shapes else None
    if shape is None or len(shape) != 2:
        raise ValueError("need at least one 2-D mask")
    code = np.zeros(shape, dtype=np.uint8)
    for index, name in enumerate(classes):
        if name in masks:
            code[np.asarray(masks[name], dtype=bool)] |= np.uint8(1 << index)
    return code


def decode(code: np.ndarray, classes: Sequence[str] = CLASSES) -> np.ndarray:
    """(len(classes), H, W) booleans from a bit-coded mask image."""
    code = np.asarray(code)
    return np.stack([(code & (1 << index)) > 0 for index in range(len(classes))])


def write_lesion_mask(path: Path, masks: Mapping[str, np.ndarray]) -> None:
    """Write one slice's masks as a bit-coded PNG (folders made as needed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(encode(masks), mode="L").save(path, format="PNG", optimize=True)


def outlined_patients(root: Path) -> set[str]:
    """The patient folders under ``<root>/masks`` (patients whose lesions were outlined)."""
    folder = root / MASKS_DIR
    if not folder.is_dir():
        return set()
    return {entry.name for entry in folder.iterdir() if entry.is_dir() and entry.name.startswith("ID_")}


def read_mask_code(root: Path, dirname: str, name: str) -> np.ndarray:
    """The bit-coded mask ``<root>/masks/<dirname>/<name>`` as uint8 (H, W), checked: a plain
    name inside the data folder, a regular file (not a link, a folder or a pipe), an 8-bit
    grayscale square PNG within the pixel budget, values 0-31. The one check of `hemo validate`
    and of every reader; raises :class:`DataError` naming the file and the fix."""
    path = inside(root, MASKS_DIR, dirname, name)
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}); restore it (dvc checkout)") from exc
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a link, folder or pipe); put the mask file itself there")
    try:
        code = read(path, None, modes=("L",))
    except ImageError as exc:
        raise DataError(f"{exc} (a lesion mask: an 8-bit grayscale PNG, bit i for {', '.join(CLASSES)})") from exc
    if code.ndim != 2 or code.shape[0] != code.shape[1]:
        raise DataError(f"{path}: a lesion mask must be square like its slice, got {code.shape[1]}x{code.shape[0]}; "
                        "re-export it at the slice's size")
    if int(code.max(initial=0)) > MAX_CODE:
        raise DataError(f"{path}: value {int(code.max())} is not a set of the {len(CLASSES)} class bits "
                        f"(0-{MAX_CODE}: 1 {CLASSES[0]}, 2 {CLASSES[1]}, 4 {CLASSES[2]}, 8 {CLASSES[3]}, "
                        f"16 {CLASSES[4]}); re-export the mask")
    return code


def resize_planes(planes: np.ndarray, image_size: int) -> np.ndarray:
    """(classes, H, W) booleans at ``image_size``: shrunk by area (a pixel is lesion when any part
    of its block is, so a thin SAH or SDH outline survives, as the bleed survives the bilinear
    shrink of its slice), enlarged by nearest neighbour (an outline is not blurred outwards)."""
    planes = np.asarray(planes, dtype=bool)
    if planes.shape[-1] == image_size and planes.shape[-2] == image_size:
        return planes
    shrink = planes.shape[-1] > image_size
    method = Image.Resampling.BOX if shrink else Image.Resampling.NEAREST
    return np.stack([np.asarray(Image.fromarray(plane.astype(np.uint8) * 255).resize((image_size, image_size),
                                                                                      method)) > 0
                     for plane in planes])


def read_lesion_mask(root: Path, dirname: str, slice_name: str, image_size: int) -> np.ndarray:
    """The slice's lesions as (classes, image_size, image_size) booleans (:func:`resize_planes`);
    all False where the outlined patient has no file for the slice. Raises :class:`DataError`
    naming the file for one that is not a checked mask (:func:`read_mask_code`), a dangling link
    included."""
    name = mask_name(slice_name)
    if not os.path.lexists(inside(root, MASKS_DIR, dirname, name)):
        return np.zeros((len(CLASSES), image_size, image_size), dtype=bool)
    return resize_planes(decode(read_mask_code(root, dirname, name)), image_size)


def check_outlined(root: Path, dirnames: Iterable[str]) -> int:
    """Check every mask file of these outlined patients (:func:`read_mask_code`) and return how
    many there were: a bad file is refused before minutes of scoring, not found after them."""
    checked = 0
    for dirname in sorted(set(dirnames)):
        folder = inside(root, MASKS_DIR, dirname)
        for entry in sorted(folder.iterdir()):
            if entry.suffix == ".png":
                read_mask_code(root, dirname, entry.name)
                checked += 1
    return checked
