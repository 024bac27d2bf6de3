"""Where each labelled lesion is, per slice: the answer a saliency map is checked against.

```
<root>/masks/ID_<hash>/<hash>_<k>.png   8-bit grayscale PNG, the slice's size; bit i of a pixel set
                                        where the lesion of CLASSES[i] is (1 ich, 2 ivh, 4 sah, 8 sdh, 16 edh)
```
Optional, for the labelled split only. A patient folder under ``masks/`` means the patient's
lesions were outlined: a slice without a file there shows none. A patient without a folder was not
outlined, and no saliency check uses it. `hemo synth` writes the phantom's masks (what it drew,
for the classes a slice is labelled with); a team with segmentations of its own (from a
segmentation data set or a reader's outlines) writes them in this form, and `hemo evaluate` then
plays the pointing game on its gate patients (:mod:`hemo_model.inference.pointing`).

One PNG per positive slice, bits rather than one file per class: five outlines of a slice stay one
file, lossless, and a viewer shows them (values 1-31 on black).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def read_lesion_mask(root: Path, dirname: str, slice_name: str, image_size: int) -> np.ndarray:
    """The slice's lesions as (classes, image_size, image_size) booleans, resized as the slice is
    resized for the model but by nearest neighbour (an outline is not blurred into its
    neighbours); all False where the outlined patient has no file for the slice. Raises
    :class:`DataError` naming the file for a mask that is not a bit-coded 8-bit PNG."""
    path = inside(root, MASKS_DIR, dirname, mask_name(slice_name))
    if not path.exists():
        return np.zeros((len(CLASSES), image_size, image_size), dtype=bool)
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
    if code.shape[0] != image_size:
        code = np.asarray(Image.fromarray(code).resize((image_size, image_size), Image.Resampling.NEAREST))
    return decode(code)
