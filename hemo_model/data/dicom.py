"""Head-CT DICOM to ordered series of Hounsfield units and windowed 8-bit slices.

What users actually have is DICOM: RSNA's flat folder of ``ID_*.dcm``, or a PACS export tree with
scouts, reports and other series mixed in. This module turns such a folder into the sequences the
pipeline trains on, deciding only from the headers what is a usable slice:

* every file is read once up to the pixel data (never decoded at this stage); anything that is not
  an axial CT image is skipped with a counted reason (:data:`FILE_REASONS`), never with its name:
  PACS exports name folders after patients. A file or folder that cannot be read at all (no
  permission, an I/O error) is counted as ``unreadable`` the same way: one bad file never stops an
  import of thousands, and its path never reaches a message;
* the pixel budget (Rows x Columns x frames against ``max_pixels``, ``data.max_image_size``
  squared) is checked from the header, so a header that claims 60000 x 60000 is skipped before a
  byte of its pixels is decoded;
* pixels can carry PHI too: a series any of whose files declares ``BurnedInAnnotation`` (anything
  but NO; missing is fine) is marked :attr:`Series.burned_in` for the caller to leave out;
* slices are grouped by SeriesInstanceUID and ordered by ImagePositionPatient projected on the
  slice normal (the cross product of the ImageOrientationPatient vectors, turned to point to the
  head, so k = 0 is the lowest slice as in the phantom). File names and InstanceNumber are never
  used: exports rename files and InstanceNumber is often the acquisition order;
* a series is then checked (:data:`SERIES_ISSUES`): a gap, uneven spacing, mixed sizes or a slice
  count outside the bounds are reported, and rejected where the caller asks;
* pixels become HU through RescaleSlope/Intercept, after MONOCHROME1 inversion and with
  PixelPaddingValue set to air, and then pass through a CT window with the convention of
  :func:`hemo_model.data.synth.window` (the one the phantom's JPEGs were written with).

The pipeline's own folders never see a header value: the caller names series by a salted hash
(:func:`series_key`), keys their patient by another (PatientID,
:func:`hemo_model.data.series_index.patient_key`) and keeps UIDs only in a mapping file the user
asks for.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import warnings
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hemo_model.data.layout import DataError
from hemo_model.data.subgroups import UNKNOWN, dicom_subgroups, scanner_group
from hemo_model.data.synth import window

WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (80.0, 200.0),
    "bone": (600.0, 2800.0),
}
"""CT windows as (centre, width) in HU; brain is the method's input."""

HU_AIR = -1000.0
"""What PixelPaddingValue pixels (outside the scanned field of view) become."""

FILE_REASONS = ("not_dicom", "unreadable", "non_image", "not_ct", "localizer", "over_pixel_budget", "multi_frame",
                "not_grayscale", "no_geometry", "not_axial")
"""Why a file is not used, in the order they are tested."""

DEFAULT_MAX_PIXELS = 1024 * 1024
"""Pixel budget of one image when the caller gives none (``data.max_image_size`` = 1024, squared)."""

_BYTES_PER_PIXEL_MAX = 8
"""The widest native pixel (64-bit float): a PixelData element longer than budget x this is a
bloated file, refused like an oversized header."""

UNDECODABLE = "undecodable_pixels"
"""A series left out because a slice's pixels could not be decoded (truncated, or a compression
without an installed decoder): dropping the slice would leave a gap."""

SERIES_ISSUES = ("too_few_slices", "too_many_slices", "gap", "inconsistent_spacing", "mixed_sizes",
                 "mixed_orientation", "mixed_patient")
"""What can be wrong with a whole series; ``mixed_orientation`` (no order exists) and
``mixed_patient`` (files of two PatientIDs under one SeriesInstanceUID: no patient to assign it
to) are always rejected."""

ALWAYS_REJECTED = ("mixed_orientation", "mixed_patient")

_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_AXIAL_MIN_COS = 0.7071
"""A series is axial when its normal is within 45 degrees of the head-foot axis (gantry tilt allowed)."""
_GAP_RATIO = 1.5
"""A step this many times the median spacing means a missing slice."""
_SPACING_TOLERANCE = 0.1
"""Relative deviation from the median spacing that counts as uneven spacing."""


@dataclass(frozen=True)
class SliceHeader:
    """What the import needs of one CT image, read without its pixels."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    rows: int
    columns: int
    burned_in: bool = False
    """BurnedInAnnotation says the pixels may show identifying text (anything but NO)."""
    patient_id: str = field(default="", repr=False)
    """PatientID, kept in memory only to key the patient (hashed with the salt); never written."""
    scanner: str = UNKNOWN
    """The vendor group of Manufacturer (:func:`~hemo_model.data.subgroups.scanner_group`): a
    closed vocabulary, never the header's text."""
    thickness_mm: float | None = None
    """SliceThickness (0018,0050), None when absent or not a number."""

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal, turned to point towards the head (+z in the patient frame)."""
        o = np.asarray(self.orientation, dtype=np.float64)
        n = np.cross(o[:3], o[3:])
        n = n / (np.linalg.norm(n) or 1.0)
        return -n if n[2] < 0 else n


@dataclass
class Scan:
    """The result of walking a folder: usable slices and why the other files were skipped."""

    slices: list[SliceHeader] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    files: int = 0
    burned_in_series: set[str] = field(default_factory=set)
    """SeriesInstanceUIDs any file of which (used or not) declares burned-in annotation."""


@dataclass
class Series:
    """One series in scan order (k = 0 lowest), with what the checks found."""

    uid: str
    study_uid: str
    slices: list[SliceHeader]
    positions: list[float]
    """Each slice's position along the normal, in mm."""
    duplicates_dropped: int = 0
    issues: list[str] = field(default_factory=list)
    burned_in: bool = False
    """A file of the series declares burned-in annotation: its pixels may show PHI."""
    patient_id: str = field(default="", repr=False)
    """The series' PatientID ("" when absent), for the patient key; never written."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence pydicom's warnings and log lines while reading: they quote header values (a bad
    date, a too-long name), and no header value may reach a log."""
    logger = logging.getLogger("pydicom")
    level, propagate = logger.level, logger.propagate
    logger.setLevel(logging.CRITICAL + 1)
    logger.propagate = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
        logger.propagate = propagate


def iter_files(folder: Path, on_error: Callable[[OSError], None] | None = None) -> Iterator[Path]:
    """Every regular file under ``folder``, any nesting, any name, in a stable order (symlinked
    folders are not followed, so a link loop cannot trap the walk). A folder that cannot be listed
    or a file that cannot even be looked at goes to ``on_error`` (never raised: the error names
    the path, and export paths carry patient names)."""
    for root, dirs, files in os.walk(folder, onerror=on_error):
        dirs.sort()
        for name in sorted(files):
            path = Path(root, name)
            try:
                regular = path.is_file()  # a FIFO or socket would block the reader
            except OSError as exc:  # no permission to stat it, a name too long, I/O
                if on_error is not None:
                    on_error(exc)
                continue
            if regular:
                yield path


def _header(path: Path) -> tuple[object, int | None]:
    """(dataset up to the pixel data, the pixel data element's length or None when there is
    none). ``read_partial`` is dcmread's own reader; with our stop condition we learn that pixels
    exist, and how many bytes they claim, without reading them."""
    from pydicom.filereader import read_partial

    seen: list[int] = []

    def at_pixels(tag: int, vr: object, length: int) -> bool:
        if tag in _PIXEL_TAGS:
            seen.append(length)
            return True
        return False

    with path.open("rb") as handle:
        ds = read_partial(handle, stop_when=at_pixels)
    return ds, (seen[0] if seen else None)


def read_header(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> SliceHeader | str:
    """The slice header of ``path``, or the reason (one of :data:`FILE_REASONS`) it is not used."""
    return inspect_file(path, max_pixels)[0]


def inspect_file(path: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[SliceHeader | str, str | None]:
    """(:func:`read_header`'s answer, the SeriesInstanceUID when the file declares burned-in
    annotation, used or not). Any failure is a counted reason, never an exception: the exception
    would name the path, and one corrupt file must not stop an import of thousands."""
    from pydicom.errors import InvalidDicomError

    try:
        with quiet():
            ds, pixel_length = _header(path)
    except InvalidDicomError:
        return "not_dicom", None
    except Exception:  # truncated or corrupt, no permission, I/O
        return "unreadable", None
    burned_series = None
    try:
        with quiet():
            if _burned_in(ds):
                burned_series = str(ds.get("SeriesInstanceUID", "")) or None  # type: ignore[attr-defined]
            return _classify(path, ds, pixel_length, max_pixels, burned_series is not None), burned_series
    except Exception:  # a header value that does not parse (values are converted when first read)
        return "unreadable", burned_series


def _burned_in(ds: object) -> bool:
    """BurnedInAnnotation (0028,0301) is YES or NO; missing or NO is fine, any other value is
    treated as YES (pixels with text in them cannot be cleaned by header rules)."""
    from pydicom.multival import MultiValue

    value = ds.get("BurnedInAnnotation")  # type: ignore[attr-defined]
    if value is None:
        return False
    values = [str(v).strip().upper() for v in (value if isinstance(value, (list, tuple, MultiValue)) else [value])]
    return any(v and v != "NO" for v in values)


def _over_budget(get: Callable, pixel_length: int, max_pixels: int) -> bool:
    """Rows x Columns x frames from the header (and the PixelData length, when defined) against
    the budget, before anything is decoded."""
    pixels = int(get("Rows", 0) or 0) * int(get("Columns", 0) or 0) * max(int(get("NumberOfFrames", 1) or 1), 1)
    undefined = pixel_length == 0xFFFFFFFF  # encapsulated (compressed): its frames are checked through the header
    return pixels > max_pixels or (not undefined and pixel_length > max_pixels * _BYTES_PER_PIXEL_MAX)


def _classify(path: Path, ds: object, pixel_length: int | None, max_pixels: int,
              burned_in: bool) -> SliceHeader | str:
    get = ds.get  # type: ignore[attr-defined]
    if pixel_length is None:  # a complete object without pixels (SR, KO, PR...), or a file cut short
        return "non_image" if "SOPClassUID" in ds else "unreadable"  # type: ignore[operator]
    if str(get("Modality", "")).upper() != "CT":
        return "not_ct"
    if "LOCALIZER" in [str(v).upper() for v in (get("ImageType") or [])]:
        return "localizer"
    if _over_budget(get, pixel_length, max_pixels):
        return "over_pixel_budget"
    if int(get("NumberOfFrames", 1) or 1) > 1:
        return "multi_frame"
    if int(get("SamplesPerPixel", 1) or 1) != 1:
        return "not_grayscale"
    position, orientation = get("ImagePositionPatient"), get("ImageOrientationPatient")
    if not position or not orientation or len(position) != 3 or len(orientation) != 6:
        return "no_geometry"
    header = SliceHeader(
        path=path,
        study_uid=str(get("StudyInstanceUID", "")),
        series_uid=str(get("SeriesInstanceUID", "")),
        sop_uid=str(get("SOPInstanceUID", "")),
        position=tuple(float(v) for v in position),  # type: ignore[arg-type]
        orientation=tuple(float(v) for v in orientation),  # type: ignore[arg-type]
        rows=int(get("Rows", 0)),
        columns=int(get("Columns", 0)),
        burned_in=burned_in,
        patient_id=str(get("PatientID", "") or "").strip(),
        scanner=scanner_group(str(get("Manufacturer", "") or ""), str(get("ManufacturerModelName", "") or "")),
        thickness_mm=_thickness(get),
    )
    if not header.series_uid or not header.sop_uid or not header.rows or not header.columns:
        return "no_geometry"
    if abs(float(header.normal[2])) < _AXIAL_MIN_COS:
        return "not_axial"
    return header


def _thickness(get: Callable) -> float | None:
    """SliceThickness in mm; a missing or malformed value is unknown, never a reason to drop the slice."""
    try:
        value = float(get("SliceThickness"))
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def series_subgroups(series: Series) -> dict[str, str]:
    """The series' row of ``subgroups.csv``: the vendor group, the thickness band (SliceThickness,
    else the spacing between slices) and the matrix band, all from the first slice in z order."""
    first = series.slices[0]
    thickness = first.thickness_mm
    if thickness is None and len(series.positions) > 1:
        thickness = float(np.median(np.diff(series.positions)))
    return dicom_subgroups(first.scanner, thickness, first.rows, first.columns)


def scan_folder(folder: Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Scan:
    """Headers of every usable CT slice under ``folder`` and counts of what was skipped; images
    over ``max_pixels`` (Rows x Columns x frames) are counted, never decoded."""
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass the folder that holds the DICOM files (--dicom)")
    scan = Scan()

    def unreadable(_: OSError) -> None:  # the error names the path: only counted
        scan.files += 1
        scan.skipped["unreadable"] += 1

    for path in iter_files(folder, unreadable):
        scan.files += 1
        found, burned_series = inspect_file(path, max_pixels)
        if burned_series:
            scan.burned_in_series.add(burned_series)
        if isinstance(found, str):
            scan.skipped[found] += 1
        else:
            scan.slices.append(found)
    return scan


def group_series(slices: Sequence[SliceHeader], min_slices: int, max_slices: int,
                 burned_in_series: Collection[str] = ()) -> list[Series]:
    """Slices grouped by SeriesInstanceUID, each series in z order and checked; sorted by UID so
    that the output does not depend on the order files were found in. A series is
    :attr:`~Series.burned_in` when one of its slices, or a file of it named in
    ``burned_in_series`` (:attr:`Scan.burned_in_series`: files not used count too), says so."""
    by_uid: dict[str, list[SliceHeader]] = {}
    for header in slices:
        by_uid.setdefault(header.series_uid, []).append(header)
    found = [order_series(uid, members, min_slices, max_slices) for uid, members in sorted(by_uid.items())]
    for series in found:
        series.burned_in = series.burned_in or series.uid in burned_in_series
    return found


def order_series(uid: str, members: Sequence[SliceHeader], min_slices: int, max_slices: int) -> Series:
    """Order by position along the normal; drop exact duplicate positions (the first by
    SOPInstanceUID is kept, so the choice is stable); record what is irregular."""
    issues: list[str] = []
    normals = np.array([m.normal for m in members])
    normal = normals[0]
    if np.abs(normals - normal).max() > 1e-3:
        issues.append("mixed_orientation")
    keyed = sorted(((round(float(np.dot(m.position, normal)), 3), m.sop_uid, m) for m in members),
                   key=lambda t: (t[0], t[1]))
    kept: list[tuple[float, SliceHeader]] = []
    for z, _, header in keyed:
        if kept and kept[-1][0] == z:
            continue
        kept.append((z, header))
    series = Series(uid=uid, study_uid=members[0].study_uid, slices=[h for _, h in kept],
                    positions=[z for z, _ in kept], duplicates_dropped=len(members) - len(kept), issues=issues,
                    burned_in=any(m.burned_in for m in members),  # a dropped duplicate's flag counts too
                    patient_id=members[0].patient_id)
    if len({m.patient_id for m in members}) > 1:  # one series, two people: a merge error upstream
        issues.append("mixed_patient")
    n = len(series.slices)
    if n < min_slices:
        issues.append("too_few_slices")
    if n > max_slices:
        issues.append("too_many_slices")
    steps = np.diff(series.positions)
    if len(steps):
        median = float(np.median(steps))
        if (steps > _GAP_RATIO * median).any():
            issues.append("gap")
        elif (np.abs(steps - median) > _SPACING_TOLERANCE * median).any():
            issues.append("inconsistent_spacing")
    if len({(h.rows, h.columns) for h in series.slices}) > 1:
        issues.append("mixed_sizes")
    return series


def stored_range(bits_stored: int, signed: bool) -> tuple[int, int]:
    """Smallest and largest value a pixel of ``bits_stored`` bits can hold."""
    if signed:
        return -(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1
    return 0, (1 << bits_stored) - 1


def hounsfield(ds: object) -> np.ndarray:
    """HU (float32, rows x columns) of one decoded CT dataset.

    * MONOCHROME1 stores "high value = dark": values are mirrored within the stored bit range
      (``low + high - value``) before the rescale, so dense tissue ends up high as in MONOCHROME2;
    * PixelPaddingValue (and PixelPaddingRangeLimit) mark pixels outside the field of view, compared
      on the stored values, and become air;
    * signed/unsigned storage is pydicom's (PixelRepresentation); the rescale is applied in float64
      and rounded to float32, which holds every HU a 16-bit CT can express at slope >= 2^-7.
    """
    get = ds.get  # type: ignore[attr-defined]
    raw = np.asarray(ds.pixel_array)  # type: ignore[attr-defined]
    if raw.ndim != 2:
        raise DataError("a CT slice must be one 2-D frame; multi-frame and colour images are not imported")
    stored = raw.astype(np.int64)
    signed = int(get("PixelRepresentation", 0)) == 1
    padding = np.zeros(stored.shape, dtype=bool)
    if get("PixelPaddingValue") is not None:
        first = int(get("PixelPaddingValue"))
        limit = get("PixelPaddingRangeLimit")
        low, high = (first, first) if limit is None else sorted((first, int(limit)))
        padding = (stored >= low) & (stored <= high)
    if str(get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        bits = int(get("BitsStored", raw.dtype.itemsize * 8))
        low, high = stored_range(bits, signed)
        stored = low + high - stored
    slope = float(get("RescaleSlope", 1.0) or 1.0)
    intercept = float(get("RescaleIntercept", 0.0) or 0.0)
    hu = stored.astype(np.float64) * slope + intercept
    hu[padding] = HU_AIR
    return hu.astype(np.float32)


def read_hu(path: Path) -> np.ndarray:
    """HU of the slice in ``path`` (decoded with pydicom's plugins: RLE needs numpy, JPEG
    Lossless needs pylibjpeg-libjpeg)."""
    import pydicom

    with quiet():
        ds = pydicom.dcmread(path)
        return hounsfield(ds)


def read_series_hu(series: Series) -> list[np.ndarray] | None:
    """HU of every slice of ``series`` in order, or None if any slice cannot be decoded."""
    try:
        return [read_hu(h.path) for h in series.slices]
    except Exception:  # a corrupt frame or a missing codec; counted by the caller as UNDECODABLE
        return None


def windowed(hu: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """uint8 slice through the named windows: (H, W) for one, (H, W, len(names)) for several."""
    unknown = [n for n in names if n not in WINDOWS]
    if unknown:
        raise ValueError(f"unknown CT window(s) {unknown}; known: {', '.join(WINDOWS)}")
    planes = [window(hu, *WINDOWS[name]) for name in names]
    return planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)


def series_key(series_uid: str, salt: str) -> str:
    """10 hex characters (the DLCV hash length) naming a series in the pipeline's folders: a
    salted SHA-256 of its UID, so the name reveals nothing and cannot be reversed by hashing
    known UIDs without the salt, yet the same series always gets the same name."""
    if not salt:
        raise ValueError("an empty salt would make series names reversible")
    return hashlib.sha256(f"{salt}\0{series_uid}".encode()).hexdigest()[:10]
