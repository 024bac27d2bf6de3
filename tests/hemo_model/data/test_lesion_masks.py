"""Lesion masks: bit-coded PNGs per slice, read at the model's size, refused when malformed."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemo_model import CLASSES
from hemo_model.data.layout import DataError, UnsafePath
from hemo_model.data.lesion_masks import (
    MASKS_DIR,
    check_outlined,
    decode,
    encode,
    mask_name,
    outlined_patients,
    read_lesion_mask,
    resize_planes,
    write_lesion_mask,
)


def _square(size: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_each_class_keeps_its_own_bit_where_lesions_overlap() -> None:
    ich, sdh = _square(8, 0, 4, 0, 4), _square(8, 2, 6, 2, 6)
    code = encode({"ich": ich, "sdh": sdh})
    assert code[0, 0] == 1 and code[5, 5] == 8 and code[3, 3] == 1 | 8 and code[7, 7] == 0
    planes = decode(code)
    assert planes.shape == (len(CLASSES), 8, 8)
    assert (planes[CLASSES.index("ich")] == ich).all() and (planes[CLASSES.index("sdh")] == sdh).all()
    assert not planes[CLASSES.index("edh")].any()


def test_encode_refuses_unknown_classes_and_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="unknown classes"):
        encode({"tumour": np.ones((4, 4), bool)})
    with pytest.raises(ValueError, match="differ in shape"):
        encode({"ich": np.ones((4, 4), bool), "ivh": np.ones((5, 5), bool)})


def test_a_mask_reads_back_at_the_model_size(tmp_path: Path) -> None:
    lesion = _square(64, 16, 32, 40, 56)  # 2x the model's 32 px
    write_lesion_mask(tmp_path / MASKS_DIR / "ID_aa" / mask_name("aa_3.jpg"), {"edh": lesion})
    planes = read_lesion_mask(tmp_path, "ID_aa", "aa_3.jpg", 32)
    assert planes.dtype == bool and planes.shape == (len(CLASSES), 32, 32)
    expected = _square(32, 8, 16, 20, 28)
    assert (planes[CLASSES.index("edh")] == expected).all()
    assert planes.sum() == expected.sum()  # no other class, nothing blurred in
    # enlarged by nearest neighbour: the outline is not blurred outwards
    assert (read_lesion_mask(tmp_path, "ID_aa", "aa_3.jpg", 128)[CLASSES.index("edh")]
            == np.kron(lesion, np.ones((2, 2), bool))).all()


def test_a_thin_outline_survives_the_shrink_to_the_model_size() -> None:
    """A 1-px SAH line on odd rows would vanish under nearest neighbour, as the bleed does not
    vanish from its bilinear-shrunk slice."""
    planes = np.zeros((len(CLASSES), 64, 64), dtype=bool)
    planes[CLASSES.index("sah"), 13, 10:50] = True
    small = resize_planes(planes, 16)
    assert small[CLASSES.index("sah"), 3, 3:12].all() and small.sum() == small[CLASSES.index("sah"), 3].sum()


def test_an_outlined_patient_without_a_file_for_a_slice_shows_no_lesion_there(tmp_path: Path) -> None:
    write_lesion_mask(tmp_path / MASKS_DIR / "ID_aa" / "aa_1.png", {"ich": _square(16, 0, 4, 0, 4)})
    (tmp_path / MASKS_DIR / "notes").mkdir()
    assert outlined_patients(tmp_path) == {"ID_aa"}
    assert not read_lesion_mask(tmp_path, "ID_aa", "aa_2.jpg", 16).any()
    assert outlined_patients(tmp_path / "elsewhere") == set()


@pytest.mark.parametrize(("pixels", "message"), [
    (np.full((8, 8), 32, np.uint8), "not a set of the 5 class bits"),
    (np.zeros((8, 6), np.uint8), "must be square"),
])
def test_a_malformed_mask_is_refused_naming_the_file(tmp_path: Path, pixels: np.ndarray, message: str) -> None:
    path = tmp_path / MASKS_DIR / "ID_aa" / "aa_0.png"
    path.parent.mkdir(parents=True)
    Image.fromarray(pixels, mode="L").save(path)
    with pytest.raises(DataError, match=message) as caught:
        read_lesion_mask(tmp_path, "ID_aa", "aa_0.jpg", 8)
    assert str(path) in str(caught.value)


def test_a_mask_in_rgb_is_refused(tmp_path: Path) -> None:
    path = tmp_path / MASKS_DIR / "ID_aa" / "aa_0.png"
    path.parent.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(DataError, match="lesion mask: an 8-bit grayscale PNG"):
        read_lesion_mask(tmp_path, "ID_aa", "aa_0.jpg", 8)


def test_links_and_pipes_are_refused_not_read(tmp_path: Path) -> None:
    """A link inside the data folder, a dangling one and a pipe (which would block the reader)."""
    folder = tmp_path / MASKS_DIR / "ID_aa"
    write_lesion_mask(folder / "aa_0.png", {"ich": _square(8, 0, 2, 0, 2)})
    (folder / "aa_1.png").symlink_to(folder / "aa_0.png")
    (folder / "aa_2.png").symlink_to(folder / "gone.png")
    os.mkfifo(folder / "aa_3.png")
    for k in (1, 2, 3):
        with pytest.raises(DataError, match="not a regular file"):
            read_lesion_mask(tmp_path, "ID_aa", f"aa_{k}.jpg", 8)
    with pytest.raises(DataError, match="aa_1.png"):
        check_outlined(tmp_path, ["ID_aa"])
    assert read_lesion_mask(tmp_path, "ID_aa", "aa_0.jpg", 8)[0].sum() == 4


def test_a_mask_linked_from_outside_the_data_folder_is_not_read(tmp_path: Path) -> None:
    root, outside = tmp_path / "data", tmp_path / "outside.png"
    Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(outside)
    (root / MASKS_DIR / "ID_aa").mkdir(parents=True)
    (root / MASKS_DIR / "ID_aa" / "aa_0.png").symlink_to(outside)
    with pytest.raises(UnsafePath, match="outside the data folder"):
        read_lesion_mask(root, "ID_aa", "aa_0.jpg", 8)
    with pytest.raises(UnsafePath):
        read_lesion_mask(root, "..", "aa_0.jpg", 8)
