"""Reading one slice, checked the same way by validation and by every loader.

Slices come from outside (PACS exports, converters, other teams' folders), so before a pixel is
decoded each file is checked:

* its format by content, not by name: a ``.jpg`` must hold JPEG and a ``.png`` PNG;
* its size against a pixel budget (``configure(max_size)``, from ``data.max_image_size``), read
  from the header: a file claiming 60000x60000 is refused before PIL allocates anything, and PIL's
  own decompression-bomb limit is set to the same budget;
* its mode: 8-bit grayscale (``L``), or 8-bit RGB where three CT windows are the channels;
  16-bit or float data would otherwise be clipped silently.

Each refusal is an :class:`ImageError` naming the file, what is wrong and what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from hemo_model.data.layout import DataError

MAGIC = {"JPEG": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",)}
SUFFIX_FORMAT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}
MODES = {"L": "8-bit grayscale", "RGB": "8-bit RGB (three CT windows)"}

DEFAULT_MAX_SIZE = 1024
_max_pixels = DEFAULT_MAX_SIZE * DEFAULT_MAX_SIZE


class ImageError(DataError):
    """A slice file that must not be read (wrong format, too large, wrong mode, unreadable)."""


def configure(max_size: int) -> None:
    """Set the pixel budget (``max_size`` x ``max_size``) for every later read, PIL's included."""
    global _max_pixels
    _max_pixels = int(max_size) * int(max_size)
    Image.MAX_IMAGE_PIXELS = _max_pixels


def max_pixels() -> int:
    return _max_pixels


@dataclass(frozen=True)
class ImageInfo:
    format: str
    mode: str
    width: int
    height: int

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


def sniff(path: Path) -> str | None:
    """The format the file's first bytes announce (``JPEG``/``PNG``), or None."""
    with path.open("rb") as handle:
        head = handle.read(8)
    return next((name for name, magics in MAGIC.items() if any(head.startswith(m) for m in magics)), None)


def header_size(path: Path, fmt: str) -> tuple[int, int] | None:
    """(width, height) from the JPEG SOF or PNG IHDR header, read before PIL sees the file, so the
    budget is checked on what the file claims; None if the header cannot be found."""
    with path.open("rb") as handle:
        data = handle.read(1 << 16)
    if fmt == "PNG":
        return (int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")) if len(data) >= 24 else None
    at = 2
    while at + 9 <= len(data):
        if data[at] != 0xFF:
            return None
        marker = data[at + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            at += 2
            continue
        length = int.from_bytes(data[at + 2:at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            return int.from_bytes(data[at + 7:at + 9], "big"), int.from_bytes(data[at + 5:at + 7], "big")
        at += 2 + length
    return None


def inspect(path: Path, modes: tuple[str, ...] | None = ("L",)) -> ImageInfo:
    """Check ``path`` from its header (nothing is decoded) or raise :class:`ImageError`.
    ``modes`` None accepts any mode (validation reports the mode as a check of its own)."""
    try:
        actual = sniff(path)
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc}); restore the file (dvc pull)") from exc
    expected = SUFFIX_FORMAT.get(path.suffix.lower())
    if actual is None:
        raise ImageError(f"{path}: not a JPEG or PNG image (by content); re-export the slice")
    if expected is not None and actual != expected:
        raise ImageError(f"{path}: holds a {actual} image but is named {path.suffix}; re-export it as {expected} "
                         "(a renamed file is not converted)")
    claimed = header_size(path, actual)
    if claimed is not None and claimed[0] * claimed[1] > _max_pixels:
        raise ImageError(f"{path}: {claimed[0]}x{claimed[1]} exceeds the {_max_pixels:,}-pixel limit "
                         "(data.max_image_size); refused before decoding")
    try:
        with Image.open(path) as image:
            width, height, mode = image.width, image.height, image.mode
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: its header claims more than the {_max_pixels:,}-pixel limit "
                         "(data.max_image_size); refused before decoding") from exc
    except (OSError, ValueError) as exc:
        raise ImageError(f"{path}: unreadable {actual} header ({exc}); re-export the slice") from exc
    if width * height > _max_pixels:
        raise ImageError(f"{path}: {width}x{height} exceeds the {_max_pixels:,}-pixel limit (data.max_image_size); "
                         "refused before decoding")
    if modes is not None and mode not in modes:
        wanted = " or ".join(MODES[m] for m in modes)
        raise ImageError(f"{path}: mode {mode} ({'16-bit or float' if mode.startswith(('I', 'F')) else 'other'} "
                         f"pixels); slices must be {wanted}: re-export them (nothing is clipped silently)")
    return ImageInfo(actual, mode, width, height)


def read(path: Path, image_size: int | None = None, modes: tuple[str, ...] | None = ("L",)) -> np.ndarray:
    """Checked, decoded slice as uint8, (H, W) for ``L`` or (H, W, 3) for ``RGB``, optionally
    resized (bilinear) to ``image_size`` square."""
    inspect(path, modes)
    try:
        with Image.open(path) as image:
            image.load()
            if image_size is not None and image.size != (image_size, image_size):
                return np.asarray(image.resize((image_size, image_size), Image.Resampling.BILINEAR), dtype=np.uint8)
            return np.asarray(image, dtype=np.uint8)
    except (OSError, ValueError) as exc:  # truncated data after a valid header
        raise ImageError(f"{path}: cannot be decoded ({exc}); re-export the slice") from exc


def read_slice(path: Path, image_size: int) -> np.ndarray:
    """8-bit grayscale slice resized to ``image_size`` (uint8, H x W), checked by :func:`read`
    (format by content, pixel budget, mode)."""
    return read(path, image_size)


def read_pixels(path: Path, image_size: int, channels: int = 1) -> np.ndarray:
    """One slice as the datasets hand it out: uint8 (channels, H, W). One channel is the gray
    slice; three are the three CT windows of an RGB PNG (model.input windows3)."""
    if channels == 1:
        return read(path, image_size)[None]
    return np.ascontiguousarray(read(path, image_size, modes=("RGB",)).transpose(2, 0, 1))
