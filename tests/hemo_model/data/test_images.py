"""One way to read a slice: format by content, a pixel budget before decoding, mode, path guard."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemo_model.data import images
from hemo_model.data.layout import UnsafePath, inside


def _jpeg(path: Path, size: int = 32, mode: str = "L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size), 128 if mode == "L" else (128, 0, 0)).save(path, format="JPEG")
    return path


def claim_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The same JPEG with its SOF0 header claiming another size (nothing else changes)."""
    at = jpeg.index(b"\xff\xc0")
    out = bytearray(jpeg)
    out[at + 5:at + 7] = height.to_bytes(2, "big")
    out[at + 7:at + 9] = width.to_bytes(2, "big")
    return bytes(out)


@pytest.fixture(autouse=True)
def _budget():
    images.configure(1024)
    yield
    images.configure(images.DEFAULT_MAX_SIZE)


def test_reads_a_gray_jpeg_and_resizes(tmp_path: Path) -> None:
    pixels = images.read(_jpeg(tmp_path / "a_0.jpg"), image_size=16)
    assert pixels.shape == (16, 16) and pixels.dtype == np.uint8


def test_png_named_jpg_is_refused_by_content(tmp_path: Path) -> None:
    path = tmp_path / "a_0.jpg"
    Image.new("L", (32, 32)).save(path, format="PNG")
    with pytest.raises(images.ImageError, match=r"holds a PNG image but is named \.jpg"):
        images.read(path)


def test_header_beyond_the_pixel_budget_is_refused_before_decoding(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    Image.new("L", (64, 64)).save(buffer, format="JPEG")
    path = tmp_path / "bomb_0.jpg"
    path.write_bytes(claim_size(buffer.getvalue(), 60000, 60000))
    with pytest.raises(images.ImageError, match=r"60000x60000 exceeds the 1,048,576-pixel limit"):
        images.inspect(path)
    images.configure(100000)  # PIL's own limit follows the budget
    assert Image.MAX_IMAGE_PIXELS == 100000 * 100000


def test_sixteen_bit_and_color_slices_are_refused_not_clipped(tmp_path: Path) -> None:
    deep = tmp_path / "deep.png"
    Image.fromarray(np.full((32, 32), 40000, dtype=np.uint16)).save(deep)
    with pytest.raises(images.ImageError, match="mode I;16 .16-bit or float pixels.*8-bit grayscale"):
        images.read(deep)
    with pytest.raises(images.ImageError, match="mode RGB"):
        images.read(_jpeg(tmp_path / "c_0.jpg", mode="RGB"))
    assert images.read(_jpeg(tmp_path / "d_0.jpg", mode="RGB"), modes=("L", "RGB")).shape == (32, 32, 3)


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    noisy = tmp_path / "w_0.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (256, 256), dtype=np.uint8)).save(noisy, format="JPEG")
    whole = noisy.read_bytes()
    cut = tmp_path / "cut_0.jpg"
    cut.write_bytes(whole[: len(whole) // 2])  # the header survives, the scan data does not
    with pytest.raises(images.ImageError, match="cannot be decoded"):
        images.read(cut)
    text = tmp_path / "t_0.jpg"
    text.write_text("hello")
    with pytest.raises(images.ImageError, match="not a JPEG or PNG image"):
        images.read(text)


def test_path_guard(tmp_path: Path) -> None:
    root = tmp_path / "data"
    _jpeg(root / "train" / "ID_a" / "a_0.jpg")
    outside = _jpeg(tmp_path / "elsewhere" / "x.jpg")
    os.symlink(outside, root / "train" / "ID_a" / "a_1.jpg")
    assert inside(root, "train", "ID_a", "a_0.jpg") == root / "train" / "ID_a" / "a_0.jpg"
    with pytest.raises(UnsafePath, match="outside the data folder"):
        inside(root, "train", "ID_a", "a_1.jpg")
    for bad in ("..", "../elsewhere", "/etc", "a/b", "a\\b"):
        with pytest.raises(UnsafePath, match="not a plain file or folder name"):
            inside(root, "train", bad)
