"""Synthetic head-CT phantom generator: a stand-in for the DLCV hemorrhage data set.

Real CT cannot be downloaded here, so tests and the demo run on phantoms that are built to
exercise the same things the real task does:

* intensities are simulated in Hounsfield units (air, bone, brain, CSF, fresh blood) and
  written through the brain window (centre 40, width 80), like the 8-bit slices users bring;
* the head's cross-section changes along the sequence, with skull, grey/white matter texture,
  ventricles in the middle slices, sulci near the cortex and skull-base bone at the bottom;
* each hemorrhage type has its own shape and compartment (EDH lens against the skull, SDH thin
  crescent, ICH parenchymal blob, IVH layering in a ventricle, SAH in sulci/cisterns);
* a lesion is a 3-D object spanning contiguous slices that grows and shrinks, so neighbouring
  slices carry information (what the 5-slice context method exploits);
* labels follow from what is drawn: a slice is positive for a class only where the lesion's
  visible area on that slice reaches ``MIN_VISIBLE_AREA``;
* distractors that are bright but not blood (calcifications, skull-base bone) and CT noise;
* two scanners whose HU differ by a few units (``subgroups.csv``), so results by scanner, as
  CLAIM and TRIPOD+AI ask for, have something to compare.

Everything is deterministic for a seed: patient ``i`` of a split depends only on
``(seed, split, i)``, not on how many patients are generated.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from hemo_model import CLASSES, LABEL_COLUMNS
from hemo_model.data.lesion_masks import MASKS_DIR, mask_name, write_lesion_mask
from hemo_model.data.subgroups import PHANTOM_SCANNERS, SUBGROUPS_FILE, write_subgroups

# Hounsfield units of the tissues we draw.
HU_AIR = -1000.0
HU_FAT = -90.0
HU_CSF = 6.0
HU_WHITE = 28.0
HU_GREY = 38.0
HU_BONE = 1400.0

BRAIN_WINDOW = (40.0, 80.0)
"""(centre, width) of the brain window used to write 8-bit slices."""

MIN_VISIBLE_AREA = 0.0035
"""Lesion area, as a fraction of the normalised [-1, 1]^2 field of view (area 4), under which a
lesion is considered too small to see on a slice and the slice is not labelled for it."""

SPLIT_IDS = {"train": 0, "test": 1}
SCANNERS = tuple(PHANTOM_SCANNERS)

# Per-patient probability of each lesion type, and its half-extent in slices. Calibrated so
# per-slice positive rates land near the original data (ich .117, ivh .082, sah .116,
# sdh .165, edh .040); `tests/hemo_model/data/test_synth.py` checks the rates on a larger sample.
LESION_PRIOR: dict[str, tuple[float, tuple[float, float]]] = {
    "ich": (0.35, (3.0, 7.0)),
    "ivh": (0.34, (3.0, 6.0)),
    "sah": (0.29, (4.0, 8.0)),
    "sdh": (0.38, (5.0, 9.0)),
    "edh": (0.12, (3.0, 6.0)),
}


def window(hu: np.ndarray, centre: float = BRAIN_WINDOW[0], width: float = BRAIN_WINDOW[1]) -> np.ndarray:
    """Map Hounsfield units to 8-bit grey levels through a CT window, as scanners export."""
    low = centre - width / 2.0
    scaled = (hu - low) / width
    return np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Lesion:
    """One hemorrhage: a 3-D object centred on slice ``centre`` spanning ``half_extent`` slices
    each side, whose in-plane size scales with a smooth profile along the sequence."""

    kind: str
    centre: float
    half_extent: float
    size: float
    angle: float
    hu: float
    offset: tuple[float, float] = (0.0, 0.0)

    def scale_at(self, k: int) -> float:
        """In-plane size factor on slice ``k`` (0 outside the lesion): grows then shrinks."""
        u = (k - self.centre) / (self.half_extent + 0.5)
        return math.sqrt(max(0.0, 1.0 - u * u))


@dataclass(frozen=True)
class Calcification:
    """A bright non-blood distractor (pineal, choroid plexus or parenchymal calcification)."""

    centre_slice: int
    span: int
    xy: tuple[float, float]
    radius: float
    hu: float


@dataclass
class Patient:
    """All random choices for one patient; rendering a slice is a pure function of this."""

    hash: str
    n_slices: int
    head_axes: tuple[float, float]
    head_shift: tuple[float, float]
    head_rotation: float
    boundary_modes: tuple[tuple[float, float], ...]
    skull_thickness: float
    ventricle_scale: float
    sulcus_count: int
    sulcus_phase: float
    noise_sigma: float
    texture_seed: int
    lesions: list[Lesion] = field(default_factory=list)
    calcifications: list[Calcification] = field(default_factory=list)
    scanner: str = "Phantom-A"
    """Which of :data:`~hemo_model.data.subgroups.PHANTOM_SCANNERS` scanned this patient: its HU
    offset is added to every pixel, so results by scanner have two groups that differ mildly."""

    @property
    def dirname(self) -> str:
        return f"ID_{self.hash}"

    def z(self, k: int) -> float:
        """Axial position of slice ``k`` in [-1, 1]: -1 at the skull base, +1 at the vertex."""
        return -1.0 + 2.0 * k / max(1, self.n_slices - 1)


@dataclass
class SliceRender:
    """One rendered slice: HU image, each class's lesion mask, and the resulting labels."""

    hu: np.ndarray
    masks: dict[str, np.ndarray]
    labels: dict[str, int]

    @property
    def pixels(self) -> np.ndarray:
        return window(self.hu)


def _hex_hash(rng: np.random.Generator) -> str:
    return "".join(f"{b:02x}" for b in rng.integers(0, 256, size=5))


def _slices_in_range(n: int, z_low: float, z_high: float) -> list[int]:
    return [k for k in range(n) if z_low <= -1.0 + 2.0 * k / max(1, n - 1) <= z_high]


def sample_patient(seed: int, split: str, index: int) -> Patient:
    """Draw every random choice for patient ``index`` of ``split`` (deterministic)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    n = int(rng.integers(22, 41))
    patient = Patient(
        hash=_hex_hash(rng),
        n_slices=n,
        head_axes=(float(rng.uniform(0.66, 0.76)), float(rng.uniform(0.80, 0.90))),
        head_shift=(float(rng.normal(0, 0.03)), float(rng.normal(0, 0.03))),
        head_rotation=float(rng.normal(0, 0.08)),
        boundary_modes=tuple((float(rng.normal(0, 0.015)), float(rng.uniform(0, 2 * math.pi))) for _ in range(4)),
        skull_thickness=float(rng.uniform(0.045, 0.07)),
        ventricle_scale=float(rng.uniform(0.8, 1.3)),
        sulcus_count=int(rng.integers(16, 28)),
        sulcus_phase=float(rng.uniform(0, 2 * math.pi)),
        noise_sigma=float(rng.uniform(2.5, 5.0)),
        texture_seed=int(rng.integers(0, 2**31 - 1)),
        # a stream of its own: the scanner leaves every other draw (and so every earlier data set's
        # anatomy and labels) as it was
        scanner=SCANNERS[int(np.random.default_rng([seed, SPLIT_IDS[split], index, 11]).integers(len(SCANNERS)))],
    )
    for kind in CLASSES:
        prob, (h_low, h_high) = LESION_PRIOR[kind]
        if rng.random() >= prob:
            continue
        half = float(rng.uniform(h_low, h_high))
        if kind == "ivh":
            candidates = _slices_in_range(n, -0.25, 0.40)
        elif kind == "sah":
            candidates = _slices_in_range(n, -0.65, 0.75)
        else:
            candidates = _slices_in_range(n, -0.55, 0.85)
        centre = float(rng.choice(candidates))
        hu = float(rng.uniform(55.0, 85.0)) if kind != "sah" else float(rng.uniform(50.0, 70.0))
        radius = float(rng.uniform(0.15, 0.5))
        theta = float(rng.uniform(0, 2 * math.pi))
        size = {
            "ich": rng.uniform(0.09, 0.17),
            "ivh": rng.uniform(0.35, 0.65),  # fill level of the ventricle
            "sah": rng.uniform(0.9, 1.6),  # angular extent of the affected sulci (radians)
            "sdh": rng.uniform(0.035, 0.06),  # maximal thickness
            "edh": rng.uniform(0.08, 0.13),  # maximal thickness of the lens
        }[kind]
        patient.lesions.append(
            Lesion(
                kind=kind,
                centre=centre,
                half_extent=half,
                size=float(size),
                angle=theta,
                hu=hu,
                offset=(radius * math.cos(theta), radius * math.sin(theta)),
            )
        )
    for _ in range(int(rng.integers(0, 3))):
        where = rng.integers(0, 3)
        if where == 0:  # pineal gland: midline, posterior, middle slices
            centre, xy = int(rng.integers(int(n * 0.45), int(n * 0.6) + 1)), (0.0, 0.22)
        elif where == 1:  # choroid plexus in the lateral ventricles
            centre, xy = int(rng.integers(int(n * 0.5), int(n * 0.65) + 1)), (float(rng.choice([-0.14, 0.14])), 0.12)
        else:  # parenchymal calcification anywhere
            centre = int(rng.integers(int(n * 0.3), int(n * 0.85) + 1))
            xy = (float(rng.uniform(-0.35, 0.35)), float(rng.uniform(-0.45, 0.45)))
        patient.calcifications.append(
            Calcification(
                centre_slice=centre,
                span=int(rng.integers(0, 2)),
                xy=xy,
                radius=float(rng.uniform(0.012, 0.025)),
                hu=float(rng.uniform(150.0, 600.0)),
            )
        )
    return patient


class _Grid:
    """Normalised coordinates of an ``size`` x ``size`` image in the head's frame."""

    def __init__(self, patient: Patient, size: int) -> None:
        coords = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
        yy, xx = np.meshgrid(coords, coords, indexing="ij")
        xx = xx - patient.head_shift[0]
        yy = yy - patient.head_shift[1]
        c, s = math.cos(patient.head_rotation), math.sin(patient.head_rotation)
        self.x = c * xx + s * yy
        self.y = -s * xx + c * yy
        self.theta = np.arctan2(self.y, self.x)
        self.size = size
        self.pixel_area = (2.0 / size) ** 2


def _ellipse_rho(x: np.ndarray, y: np.ndarray, ax: float, ay: float) -> np.ndarray:
    return np.sqrt((x / ax) ** 2 + (y / ay) ** 2)


def render_slice(patient: Patient, k: int, size: int) -> SliceRender:
    """Render slice ``k`` of ``patient`` at ``size`` px: HU image, lesion masks and labels."""
    g = _Grid(patient, size)
    z = patient.z(k)
    rng = np.random.default_rng([patient.texture_seed, k])

    # Head outline: largest a little above the middle, small at the base and the vertex.
    width = max(0.30, math.sqrt(max(0.0, 1.0 - ((z - 0.1) / 1.18) ** 2)))
    ax, ay = patient.head_axes[0] * width, patient.head_axes[1] * width
    wobble = np.ones_like(g.theta)
    for i, (amp, phase) in enumerate(patient.boundary_modes, start=2):
        wobble = wobble + amp * np.cos(i * g.theta + phase)
    rho_out = _ellipse_rho(g.x, g.y, ax, ay) / wobble
    t = patient.skull_thickness
    rho_in = _ellipse_rho(g.x, g.y, ax - t, ay - t) / wobble
    scalp = _ellipse_rho(g.x, g.y, ax + 0.035, ay + 0.035) / wobble

    hu = np.full((size, size), HU_AIR, dtype=np.float32)
    hu[scalp < 1.0] = HU_FAT
    hu[scalp < 0.985] = 45.0  # galea/muscle
    hu[rho_out < 1.0] = HU_BONE
    brain = rho_in < 1.0

    # Grey/white matter with smooth texture.
    texture = ndimage.gaussian_filter(rng.standard_normal((size, size)).astype(np.float32), sigma=size / 48.0)
    texture *= 2.5 / (texture.std() + 1e-6)
    white = rho_in + 0.04 * texture < 0.74
    tissue = np.where(white, HU_WHITE, HU_GREY) + texture
    hu[brain] = tissue[brain]

    # Sulci near the cortex: thin radial CSF clefts, more of them towards the vertex.
    # The texture field bends them and varies their depth so they are not regular tick marks.
    bent = g.theta + 0.06 * texture
    sulcus_wave = np.abs(np.sin(patient.sulcus_count * bent / 2.0 + patient.sulcus_phase + 2.0 * z))
    depth = 0.84 - 0.06 * max(z, 0.0) + 0.025 * texture
    sulci = brain & (rho_in > depth) & ((sulcus_wave > 0.95) | (rho_in > 0.975))
    hu[sulci] = HU_CSF

    # Basal cisterns around the midbrain on lower-middle slices.
    cisterns = np.zeros_like(brain)
    if -0.55 <= z <= -0.15:
        rc = np.sqrt(g.x**2 + (g.y - 0.05) ** 2)
        cisterns = brain & (rc > 0.13) & (rc < 0.17) & (g.y > -0.1)
        hu[cisterns] = HU_CSF

    # Lateral ventricles (butterfly of two tilted ellipses) in the middle slices.
    ventricles = np.zeros_like(brain)
    vz = 1.0 - ((z - 0.08) / 0.40) ** 2
    if vz > 0:
        vs = patient.ventricle_scale * math.sqrt(vz)
        for side in (-1.0, 1.0):
            cx = side * 0.09 * patient.ventricle_scale
            ang = side * 0.25
            xr = (g.x - cx) * math.cos(ang) + (g.y + 0.02) * math.sin(ang)
            yr = -(g.x - cx) * math.sin(ang) + (g.y + 0.02) * math.cos(ang)
            ventricles |= _ellipse_rho(xr, yr, 0.055 * vs, 0.27 * vs) < 1.0
        ventricles &= brain
        hu[ventricles] = HU_CSF

    # Skull base: petrous ridges and sphenoid bone, and air in the sinuses (bright non-blood).
    if z < -0.5:
        strength = min(1.0, (-0.5 - z) / 0.3)
        for side in (-1.0, 1.0):
            ang = side * 0.6
            xr = (g.x - side * 0.28) * math.cos(ang) + (g.y - 0.15) * math.sin(ang)
            yr = -(g.x - side * 0.28) * math.sin(ang) + (g.y - 0.15) * math.cos(ang)
            hu[brain & (_ellipse_rho(xr, yr, 0.22 * strength + 0.02, 0.05) < 1.0)] = HU_BONE
        sphenoid = _ellipse_rho(g.x, g.y + 0.25, 0.16 * strength + 0.02, 0.07) < 1.0
        hu[brain & sphenoid] = HU_BONE
        hu[brain & (_ellipse_rho(g.x, g.y + 0.45, 0.12 * strength, 0.08) < 1.0)] = HU_AIR

    for calc in patient.calcifications:
        if abs(k - calc.centre_slice) <= calc.span:
            spot = _ellipse_rho(g.x - calc.xy[0], g.y - calc.xy[1], calc.radius, calc.radius) < 1.0
            hu[spot & brain] = calc.hu

    masks = {name: np.zeros((size, size), dtype=bool) for name in CLASSES}
    for lesion in patient.lesions:
        scale = lesion.scale_at(k)
        if scale <= 0.0:
            continue
        mask = _lesion_mask(lesion, scale, g, brain, rho_in, ventricles, sulci | cisterns, (ax, ay))
        masks[lesion.kind] |= mask
        hu[mask] = lesion.hu + 0.5 * texture[mask]

    hu += rng.normal(0.0, patient.noise_sigma, size=hu.shape).astype(np.float32)
    hu += np.float32(PHANTOM_SCANNERS[patient.scanner])
    labels = {name: int(masks[name].sum() * g.pixel_area >= MIN_VISIBLE_AREA) for name in CLASSES}
    return SliceRender(hu=hu, masks=masks, labels=labels)


def _lesion_mask(
    lesion: Lesion,
    scale: float,
    g: _Grid,
    brain: np.ndarray,
    rho_in: np.ndarray,
    ventricles: np.ndarray,
    csf_spaces: np.ndarray,
    axes: tuple[float, float],
) -> np.ndarray:
    """Pixels of one lesion on a slice, confined to the compartment where that bleed occurs."""
    if lesion.kind == "ich":
        # Irregular blob in the parenchyma, away from the skull.
        ox, oy = lesion.offset[0] * 0.8, lesion.offset[1] * 0.8
        r = np.sqrt((g.x - ox) ** 2 + (g.y - oy) ** 2)
        ang = np.arctan2(g.y - oy, g.x - ox)
        radius = lesion.size * scale * (1.0 + 0.25 * np.cos(3 * ang + lesion.angle) + 0.1 * np.cos(5 * ang))
        return brain & (r < radius) & (rho_in < 0.9) & ~ventricles
    if lesion.kind == "ivh":
        # Blood layering in the dependent (posterior, +y) part of the ventricles.
        if not ventricles.any():
            return np.zeros_like(brain)
        ys = g.y[ventricles]
        level = ys.max() - (ys.max() - ys.min()) * lesion.size * scale
        return ventricles & (g.y >= level)
    if lesion.kind == "sah":
        # Blood in the sulci and cisterns within an angular sector.
        diff = np.angle(np.exp(1j * (g.theta - lesion.angle)))
        return csf_spaces & (np.abs(diff) < lesion.size * scale)
    # Extra-axial bleeds hug the inner table of the skull at angle `lesion.angle`.
    diff = np.angle(np.exp(1j * (g.theta - lesion.angle)))
    if lesion.kind == "sdh":
        # Thin crescent: long along the skull, thickness tapering to the ends.
        span = 1.3 * (0.5 + 0.5 * scale)
        taper = np.clip(np.cos(np.clip(diff / span, -1, 1) * math.pi / 2), 0, None)
        thickness = lesion.size * scale * taper
        inner = 1.0 - thickness / min(axes)
        return brain & (rho_in > inner) & (np.abs(diff) < span)
    # EDH: biconvex lens, short along the skull and thick in the middle.
    span = 0.55 * (0.5 + 0.5 * scale)
    lens = np.clip(1.0 - (diff / span) ** 2, 0, None)
    thickness = lesion.size * scale * lens
    inner = 1.0 - thickness / min(axes)
    return brain & (rho_in > inner) & (np.abs(diff) < span)


def iter_patient_slices(patient: Patient, size: int) -> Iterator[tuple[int, SliceRender]]:
    for k in range(patient.n_slices):
        yield k, render_slice(patient, k, size)


def _write_jpeg(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels, mode="L").save(path, format="JPEG", quality=95)


def _patients(seed: int, split: str, n_patients: int, scanner_drift: bool = True) -> list[Patient]:
    """The split's patients, each in a folder of its own; without ``scanner_drift`` all on the first
    scanner (no HU offset), as the generator made them before it had scanners."""
    patients, seen = [], set()
    for index in range(n_patients):
        patient = sample_patient(seed, split, index)
        if not scanner_drift:
            patient.scanner = SCANNERS[0]
        if patient.hash in seen:  # 40-bit hashes: astronomically rare, but never write two into one folder
            patient.hash = f"{patient.hash}{index:x}"
        seen.add(patient.hash)
        patients.append(patient)
    return patients


def write_split(
    out: Path,
    split: str,
    n_patients: int,
    image_size: int,
    seed: int,
    progress: bool = False,
    scanner_drift: bool = True,
) -> list[dict[str, object]]:
    """Write ``out/<split>/ID_<hash>/<hash>_<k>.jpg`` for ``n_patients``; return label rows. For the
    labelled split, each positive slice's lesion masks too (``out/masks/``, only the classes the
    slice is labelled with: :mod:`hemo_model.data.lesion_masks`)."""
    rows: list[dict[str, object]] = []
    iterator: range | object = range(n_patients)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(range(n_patients), desc=f"synth {split}", unit="patient")
    patients = _patients(seed, split, n_patients, scanner_drift)
    for index in iterator:  # type: ignore[union-attr]
        patient = patients[index]
        folder = out / split / patient.dirname
        folder.mkdir(parents=True, exist_ok=True)
        for k, render in iter_patient_slices(patient, image_size):
            name = f"{patient.hash}_{k}.jpg"
            _write_jpeg(folder / name, render.pixels)
            shown = {c: render.masks[c] for c in CLASSES if render.labels[c]}
            if split == "train" and shown:
                write_lesion_mask(out / MASKS_DIR / patient.dirname / mask_name(name), shown)
            rows.append({"dirname": patient.dirname, "ID": name, **render.labels})
    return rows


def write_labels(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(LABEL_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


ANSWER_KEY_NAME = "test_answer_key.csv"
"""Labels of the synthetic test split. Kept beside the data for tests and offline evaluation;
the pipeline never reads it (real test sets come without labels)."""


def generate_dataset(
    out: Path,
    train_patients: int,
    test_patients: int,
    image_size: int = 512,
    seed: int = 0,
    progress: bool = False,
    scanner_drift: bool = True,
) -> dict[str, int]:
    """Write a complete DLCV-layout data set under ``out`` and return slice counts per split
    (``scanner_drift`` False: every patient on Phantom-A)."""
    out.mkdir(parents=True, exist_ok=True)
    train_rows = write_split(out, "train", train_patients, image_size, seed, progress, scanner_drift)
    write_labels(out / "train.csv", train_rows)
    test_rows = write_split(out, "test", test_patients, image_size, seed, progress, scanner_drift)
    write_labels(out / ANSWER_KEY_NAME, test_rows)
    write_subgroups(out / SUBGROUPS_FILE, {patient.dirname: {"scanner": patient.scanner}
                                           for split, n in (("train", train_patients), ("test", test_patients))
                                           for patient in _patients(seed, split, n, scanner_drift)})
    return {"train_slices": len(train_rows), "test_slices": len(test_rows)}
