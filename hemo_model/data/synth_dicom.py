"""The phantom as a PACS would export it: real CT Image Storage files with realistic headers.

Each synthetic patient (:func:`hemo_model.data.synth.sample_patient`) becomes one study with one axial
CT series (HU stored as uint16 + intercept -1024, or int16 with a padding value outside the field
of view, as scanners differ) and a localizer, written with pydicom. The headers carry FAKE
identifying data (name, ID, birth date, institution, accession, physicians, dates): the import's
privacy test plants them here and then searches every output for them. The train split also gets
an RSNA-style label file (``ID_<SOPInstanceUID>_<type>,Label``, six types with ``any``).

Deterministic for a seed, UIDs included. With ``shuffle_names`` the files lie flat under opaque
names and InstanceNumber no longer follows z, which is what an importer must cope with.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hemo_model import CLASSES
from hemo_model.data.dicom import stored_range
from hemo_model.data.rsna import SUBMISSION_TYPES, TYPE_TO_CLASS, instance_key
from hemo_model.data.subgroups import PHANTOM_MANUFACTURER
from hemo_model.data.synth import SPLIT_IDS, iter_patient_slices, render_slice, sample_patient

LABELS_NAME = "train_labels.csv"
SLICE_SPACING_MM = 5.0
FIELD_OF_VIEW_MM = 220.0
_LAST = ("Quillfeather", "Okonkwo-Vance", "Lindqvist", "Tremblay-Soto", "Nakamura-Hale", "Castellanos")
_FIRST = ("Ottoline", "Bartholomew", "Seraphina", "Ignatius", "Wilhelmina", "Thaddeus")


@dataclass(frozen=True)
class Storage:
    """How HU are stored: dtype, bits, rescale, photometric interpretation, padding."""

    signed: bool = False
    bits_stored: int = 12
    slope: float = 1.0
    intercept: float = -1024.0
    monochrome1: bool = False
    padding_value: int | None = None


UNSIGNED_12 = Storage()
SIGNED_16 = Storage(signed=True, bits_stored=16, intercept=0.0, padding_value=-2000)


def fake_phi(seed: int, split: str, index: int) -> dict[str, str]:
    """Identifying header values for one synthetic patient: all invented, all distinctive, so a
    search of the import's outputs for them has no false hits."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index, 77])
    last, first = _LAST[index % len(_LAST)], _FIRST[(index // len(_LAST) + SPLIT_IDS[split]) % len(_FIRST)]
    year, month, day = int(rng.integers(1931, 1990)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
    return {
        "PatientName": f"{last}^{first}^Q{index}",
        "PatientID": f"PHX{SPLIT_IDS[split]}{seed % 100:02d}{index:05d}",
        "PatientBirthDate": f"{year}{month:02d}{day:02d}",
        "InstitutionName": "Saint Phantomia Memorial Hospital",
        "InstitutionAddress": "17 Fakestreet, Nowhereville",
        "AccessionNumber": f"ACCX{int(rng.integers(10**7, 10**8))}",
        "ReferringPhysicianName": f"Referrer^Ambrosius^{index}",
        "PerformingPhysicianName": "Radiologist^Cornelius",
        "OperatorsName": "Techfake^Philippa",
        "StationName": "PHANTOMCT07",
        "StudyDate": f"2023{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}",
        "StudyID": f"S{int(rng.integers(10**5, 10**6))}",
    }


def stored_values(hu: np.ndarray, storage: Storage, padding_mask: np.ndarray | None = None) -> np.ndarray:
    """HU -> the integers a scanner would store (rounded, clipped to the stored range)."""
    low, high = stored_range(storage.bits_stored, storage.signed)
    values = np.clip(np.rint((np.asarray(hu, dtype=np.float64) - storage.intercept) / storage.slope), low, high)
    if storage.monochrome1:
        values = low + high - values
    if padding_mask is not None and storage.padding_value is not None:
        values[padding_mask] = storage.padding_value
    return values.astype(np.int16 if storage.signed else np.uint16)


def ct_slice(hu: np.ndarray, *, study_uid: str, series_uid: str, sop_uid: str, z: float, instance: int,
             phi: dict[str, str], storage: Storage = UNSIGNED_12, padding_mask: np.ndarray | None = None,
             orientation: Sequence[float] = (1, 0, 0, 0, 1, 0), position: Sequence[float] | None = None,
             spacing_mm: float = 0.5, localizer: bool = False, modality: str = "CT",
             frame_uid: str | None = None, series_number: int = 2, scanner: str = "Phantom-A") -> object:
    """One CT Image Storage dataset (preamble set, so STOW-RS sends a valid Part 10 file)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.preamble = b"\0" * 128
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, sop_uid
    for key, value in phi.items():
        setattr(ds, key, value)
    ds.PatientSex = "O"
    ds.StudyTime = "101500"
    ds.StudyDescription = "CT HEAD WITHOUT CONTRAST"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = "TOPOGRAM" if localizer else f"AXIAL {SLICE_SPACING_MM:g}mm BRAIN"
    ds.Manufacturer, ds.ManufacturerModelName = PHANTOM_MANUFACTURER, scanner
    ds.BodyPartExamined = "HEAD"
    ds.FrameOfReferenceUID = frame_uid or series_uid
    ds.PositionReferenceIndicator = ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER" if localizer else "AXIAL"]
    ds.InstanceNumber = instance
    rows, cols = hu.shape
    where = position if position is not None else (-cols * spacing_mm / 2, -rows * spacing_mm / 2, z)
    ds.ImagePositionPatient = [round(float(v), 4) for v in where]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [round(spacing_mm, 6), round(spacing_mm, 6)]
    ds.SliceThickness = SLICE_SPACING_MM
    ds.KVP = 120
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = storage.intercept, storage.slope, "HU"
    ds.WindowCenter, ds.WindowWidth = 40, 80
    pixels = stored_values(hu, storage, padding_mask)
    ds.set_pixel_data(pixels, photometric_interpretation="MONOCHROME1" if storage.monochrome1 else "MONOCHROME2",
                      bits_stored=storage.bits_stored, generate_instance_uid=False)
    if storage.padding_value is not None:
        ds.PixelPaddingValue = storage.padding_value
    return ds


def _uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def patient_series(seed: int, split: str, index: int, image_size: int,
                   person: int | None = None) -> tuple[list[object], list[dict[str, int]]]:
    """The datasets of one scan (axial slices in z order, then a localizer) and each axial slice's
    labels. ``person`` (default ``index``) chooses the fake patient: two scans with the same
    ``person`` are one patient's first and follow-up study."""
    patient = sample_patient(seed, split, index)
    phi = fake_phi(seed, split, index if person is None else person)
    study, series, frame = (_uid(seed, split, index, what) for what in ("study", "series", "frame"))
    storage = UNSIGNED_12 if index % 2 == 0 else SIGNED_16
    spacing = FIELD_OF_VIEW_MM / image_size
    centre = (np.arange(image_size) + 0.5) / image_size * 2 - 1
    outside = (centre[:, None] ** 2 + centre[None, :] ** 2) > 1.0  # scanned field of view is a disc
    z0 = round(float(np.random.default_rng([seed, SPLIT_IDS[split], index, 5]).uniform(-80, -40)), 1)
    datasets, labels = [], []
    for k, render in iter_patient_slices(patient, image_size):
        datasets.append(ct_slice(render.hu, study_uid=study, series_uid=series, frame_uid=frame,
                                 sop_uid=_uid(seed, split, index, "sop", k), z=z0 + SLICE_SPACING_MM * k,
                                 instance=k + 1, phi=phi, storage=storage, padding_mask=outside,
                                 spacing_mm=spacing, scanner=patient.scanner))
        labels.append(render.labels)
    middle = render_slice(patient, patient.n_slices // 2, image_size).hu
    datasets.append(ct_slice(middle, study_uid=study, series_uid=_uid(seed, split, index, "scout"), frame_uid=frame,
                             sop_uid=_uid(seed, split, index, "scout-sop"), z=0.0, instance=1, phi=phi,
                             orientation=(1, 0, 0, 0, 0, -1), spacing_mm=spacing, localizer=True, series_number=1,
                             position=(-image_size * spacing / 2, 0.0, z0 + SLICE_SPACING_MM * patient.n_slices),
                             scanner=patient.scanner))
    return datasets, labels


def rsna_label_rows(datasets: Sequence[object], labels: Sequence[dict[str, int]]) -> list[tuple[str, int]]:
    rows: list[tuple[str, int]] = []
    for ds, lab in zip(datasets, labels):
        key = instance_key(str(ds.SOPInstanceUID))  # type: ignore[attr-defined]
        values = {t: lab[c] for t, c in TYPE_TO_CLASS.items()}
        values["any"] = max(lab[c] for c in CLASSES)
        rows.extend((f"{key}_{t}", values[t]) for t in SUBMISSION_TYPES)
    return rows


def write_dicom_split(out: Path, split: str, n_patients: int, image_size: int, seed: int,
                      shuffle_names: bool = False, followups: int = 0) -> tuple[int, list[tuple[str, int]]]:
    """Write ``n_patients`` studies under ``out/<split>/``; return (slices written, RSNA label rows).

    Names: ``<PatientID>/CT<series number>/IM<instance>.dcm`` as PACS exports do (identifying
    folder names included), or with ``shuffle_names`` 16 hex characters, no extension, all in one
    folder, with InstanceNumber shuffled too. The last ``followups`` studies are follow-up scans
    of the first ones' patients (same PatientID, another study and series)."""
    if not 0 <= followups <= n_patients // 2:
        raise ValueError(f"followups must be in 0..{n_patients // 2} for {n_patients} studies")
    rng = np.random.default_rng([seed, SPLIT_IDS[split], 99])
    slices, label_rows = 0, []
    first_scans = n_patients - followups
    for index in range(n_patients):
        person = index if index < first_scans else index - first_scans
        datasets, labels = patient_series(seed, split, index, image_size, person)
        label_rows.extend(rsna_label_rows(datasets[:-1], labels))
        if shuffle_names:
            numbers = rng.permutation(len(datasets) - 1) + 1
            for ds, number in zip(datasets[:-1], numbers):
                ds.InstanceNumber = int(number)  # type: ignore[attr-defined]
        for ds in datasets:
            if shuffle_names:
                path = out / split / f"{int(rng.integers(2**63)):016x}"
            else:
                folder = out / split / str(ds.PatientID)  # type: ignore[attr-defined]
                folder = folder / f"followup{index}" if person != index else folder  # the patient's second study
                path = folder / f"CT{ds.SeriesNumber}" / f"IM{ds.InstanceNumber:04d}.dcm"  # type: ignore[attr-defined]
            path.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(path, enforce_file_format=True)  # type: ignore[attr-defined]
        slices += len(datasets) - 1
    return slices, label_rows


def write_rsna_labels(path: Path, rows: Sequence[tuple[str, int]]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["ID", "Label"])
        writer.writerows(rows)


def generate_dicom_dataset(out: Path, train_patients: int, test_patients: int, image_size: int = 512, seed: int = 0,
                           shuffle_names: bool = False, followups: int = 0) -> dict[str, int]:
    """``out/train/``, ``out/test/`` as DICOM and ``out/train_labels.csv`` (RSNA style); the last
    ``followups`` of the ``train_patients`` studies are follow-up scans of earlier patients."""
    out.mkdir(parents=True, exist_ok=True)
    train_slices, rows = write_dicom_split(out, "train", train_patients, image_size, seed, shuffle_names, followups)
    write_rsna_labels(out / LABELS_NAME, rows)
    test_slices, _ = write_dicom_split(out, "test", test_patients, image_size, seed, shuffle_names)
    return {"train_slices": train_slices, "test_slices": test_slices}
