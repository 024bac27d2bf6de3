"""The model's answer for one exam as DICOM objects a PACS files and shows (IHE AI Results): a
TID 1500 Comprehensive SR and Secondary Captures of the evidence slices with their saliency map,
built with highdicom's typed builders.

What travels from the source headers is what filing needs and nothing else: :func:`filing_view`
copies the Patient and General Study identifiers (so the PACS files the objects under the source
study) and the referenced instances' UIDs. Handed a whole header, highdicom would also copy the
study description, the physicians and a Contributing Equipment item with the source's institution
and station; those never reach the objects.

UIDs are derived, not random (:func:`derived_uid`): the same series scored by the same model
version gives the same SR and SC UIDs, so a second push replaces rather than duplicates.
Codes: SNOMED CT where pydicom's code dictionary has the concept (intracranial hemorrhage, high and
low risk, CT of head, brain), the private scheme 99HEMO (declared in the SR) for the five types
and for "deferred"; dciodvfy warns once per private code, which is expected of a private scheme.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hemo_model import CLASSES

RESULT_COLUMNS = ("any", *CLASSES)
SCHEME = "99HEMO"
FINDINGS: dict[str, Code] = {
    "any": codes.SCT.IntracranialHemorrhage,
    "ich": Code("ICH", SCHEME, "Intraparenchymal hemorrhage"),
    "ivh": Code("IVH", SCHEME, "Intraventricular hemorrhage"),
    "sah": Code("SAH", SCHEME, "Subarachnoid hemorrhage"),
    "sdh": Code("SDH", SCHEME, "Subdural hemorrhage"),
    "edh": Code("EDH", SCHEME, "Epidural hemorrhage"),
}
TRIAGE = Code("TRIAGE", SCHEME, "AI triage bin")
BINS: dict[str, Code] = {"high_risk": codes.SCT.HighRisk, "low_risk": codes.SCT.LowRisk,
                         "defer": Code("DEFER", SCHEME, "Deferred to a radiologist")}
MANUFACTURER = "hemo-pipeline"
MODEL_NAME = "hemorrhage-classifier"
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSIS - AI triage output"
DEFAULT_UID_ROOT = "1.2.826.0.1.3680043.8.498."
"""pydicom's UID root; a hospital sets its own (``hemo report --uid-root``)."""
SR_SERIES_NUMBER, SC_SERIES_NUMBER = 9901, 9902

FILING = ("SpecificCharacterSet", "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
          "StudyDate", "StudyTime", "AccessionNumber", "StudyID")
"""Patient and General Study attributes the SR and SC IODs require (Type 1 or 2): what files the
objects under the source study in a PACS, and all that is copied."""
REFERENCES = ("SOPClassUID", "SOPInstanceUID", "SeriesInstanceUID")


@dataclass(frozen=True)
class ExamResult:
    """One row of `hemo score`'s exams.csv with its evidence slices resolved to source instances."""

    dirname: str
    probabilities: Mapping[str, float]
    """any and each type, calibrated where ``calibrated``"""
    triage: str
    calibrated: bool
    evidence: Mapping[str, Sequence[str]]
    """any and each type: SOPInstanceUIDs of the top slices, most suspicious first"""


@dataclass(frozen=True)
class ModelInfo:
    version: str
    """registry version(s) that scored, e.g. "4" or "4+5+6" for an ensemble"""
    uid_root: str = DEFAULT_UID_ROOT


def derived_uid(root: str, *parts: str) -> str:
    """A UID that is a function of ``parts``: generate_uid hashes its entropy sources, but joins
    them with nothing (("3", "sr") and ("3s", "r") would collide) and ignores them without a
    prefix; one separated key and an explicit root avoid both."""
    key = "\x1f".join(("hemo-pipeline/results/1", *parts))
    return str(generate_uid(prefix=root, entropy_srcs=[key]))


CONFORMANT = {"StudyDate": re.compile(r"[0-9]{8}"), "PatientBirthDate": re.compile(r"[0-9]{8}"),
              "StudyTime": re.compile(r"[0-9]{2}([0-9]{2}([0-9]{2}(\.[0-9]{1,6})?)?)?"),
              "PatientSex": re.compile(r"[MFO]")}
"""Values highdicom refuses unless they follow the standard's form; a de-identified or
non-conformant header ("2020-01-01", "U") gets the attribute empty instead (Type 2)."""


def filing_view(source: Dataset) -> Dataset:
    """The part of a source header the result objects may carry: :data:`FILING` and :data:`REFERENCES`.
    The Type 2 filing attributes are present, empty where the source lacks them or holds a value
    not in the standard's form (de-identified data often does); ReferringPhysicianName is empty."""
    out = Dataset()
    for keyword in FILING + REFERENCES:
        value = source.get(keyword)
        if keyword in CONFORMANT:
            text = str(value or "").strip()
            value = text if CONFORMANT[keyword].fullmatch(text) else ""
        if value is not None:
            setattr(out, keyword, value)
        elif keyword in FILING[1:]:
            setattr(out, keyword, "")
    out.ReferringPhysicianName = ""
    return out


UID_ROOT = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*\.")


def check_uid_root(root: str) -> str:
    """A UID root as generate_uid wants it (digits and dots, ending in a dot, at most 54
    characters so the derived UID fits 64); the trailing dot added. ValueError when it is not one."""
    root = root if root.endswith(".") else root + "."
    if not UID_ROOT.fullmatch(root) or len(root) > 54:
        raise ValueError(root)
    return root


def _algorithm(model: ModelInfo) -> Any:
    return hd.sr.AlgorithmIdentification(name=f"{MANUFACTURER} {MODEL_NAME}", version=model.version)


def build_sr(exam: ExamResult, sources: Mapping[str, Dataset], model: ModelInfo) -> Dataset:
    """A TID 1500 measurement report: per column (any + 5 types) a measurement group with the
    probability (DCM Probability, unit 1), the triage bin (on "any" the exam's bin; on each type its
    own is not fitted, so only "any" carries one), the evidence slices as image references, and the
    algorithm; observer: the model as a device. Filed in the source study, in a series of its own."""
    series_uid = sources[exam.evidence["any"][0]].SeriesInstanceUID
    algorithm = _algorithm(model)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=derived_uid(model.uid_root, "device", model.version), name=f"{MANUFACTURER} {MODEL_NAME}",
        manufacturer_name=MANUFACTURER, model_name=MODEL_NAME)
    context = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=codes.DCM.Device, observer_identifying_attributes=device))
    groups = []
    for column in RESULT_COLUMNS:
        refs = [sources[uid] for uid in exam.evidence[column]]
        evaluations = ([hd.sr.QualitativeEvaluation(name=TRIAGE, value=BINS[exam.triage])] if column == "any" else None)
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=derived_uid(model.uid_root, series_uid, model.version, f"tracking-{column}"),
                identifier=f"hemorrhage-{column}"),
            finding_type=FINDINGS[column],
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.SCT.Brain)],
            algorithm_id=algorithm,
            measurements=[hd.sr.Measurement(
                name=codes.DCM.Probability, value=float(exam.probabilities[column]), unit=codes.UCUM.NoUnits,
                algorithm_id=algorithm,
                referenced_images=[hd.sr.SourceImageForMeasurement(d.SOPClassUID, d.SOPInstanceUID) for d in refs])],
            qualitative_evaluations=evaluations,
            source_images=[hd.sr.SourceImageForMeasurementGroup(d.SOPClassUID, d.SOPInstanceUID) for d in refs]))
    report = hd.sr.MeasurementReport(observation_context=context,
                                     procedure_reported=codes.SCT.ComputedTomographyOfHead, imaging_measurements=groups)
    referenced = sorted({uid for column in RESULT_COLUMNS for uid in exam.evidence[column]})
    scale = "" if exam.calibrated else ", uncalibrated"
    return hd.sr.ComprehensiveSR(
        evidence=[filing_view(sources[uid]) for uid in referenced], content=report[0],
        series_instance_uid=derived_uid(model.uid_root, series_uid, model.version, "sr-series"),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=derived_uid(model.uid_root, series_uid, model.version, "sr"),
        instance_number=1, manufacturer=MANUFACTURER, manufacturer_model_name=MODEL_NAME,
        software_versions=model.version, is_complete=True, is_final=False, is_verified=False,
        series_description=f"AI hemorrhage triage{scale} - NOT FOR DIAGNOSIS",
        coding_schemes=[hd.coding_schemes.CodingSchemeIdentificationItem(
            designator=SCHEME, name="hemo-pipeline hemorrhage triage codes", version="1",
            responsible_organization=MANUFACTURER)])


def overlay_pixels(gray: np.ndarray, saliency: np.ndarray | None, caption: str) -> np.ndarray:
    """RGB uint8: the windowed slice, the saliency map in red where it is above 5 % of its peak
    (resized to the slice), and two burnt-in lines: ``caption`` and "NOT FOR DIAGNOSIS"."""
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    if saliency is not None and saliency.size:
        heat = np.asarray(Image.fromarray(np.asarray(saliency, np.float32)).resize(gray.shape[::-1],
                                                                                   Image.Resampling.BILINEAR))
        peak = float(heat.max())
        alpha = (np.clip(heat / peak, 0, 1) * 0.55 if peak > 0 else np.zeros_like(heat))[..., None]
        alpha = np.where(alpha > 0.05 * 0.55, alpha, 0.0)
        rgb = (1 - alpha) * rgb + alpha * np.array([255.0, 32.0, 0.0])
    image = Image.fromarray(rgb.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    band = max(12, gray.shape[0] // 24)
    draw.rectangle([0, 0, image.width, band], fill=(0, 0, 0))
    draw.text((2, 1), NOT_FOR_DIAGNOSIS, fill=(255, 255, 0))
    draw.rectangle([0, image.height - band, image.width, image.height], fill=(0, 0, 0))
    draw.text((2, image.height - band + 1), caption, fill=(255, 255, 0))
    return np.asarray(image, dtype=np.uint8)


def build_sc(source: Dataset, pixels: np.ndarray, column: str, probability: float, model: ModelInfo,
             zoom: int = 1) -> Dataset:
    """An RGB Secondary Capture of one evidence slice with its overlay (``pixels``, the source's
    rows x columns x 3, enlarged ``zoom`` times), derived from that slice, in the source study, marked not for diagnosis in
    the pixels (BurnedInAnnotation YES) and in ImageComments."""
    series_uid = str(source.SeriesInstanceUID)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=filing_view(source), pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB, bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT, patient_orientation=_orientation(source),
        series_instance_uid=derived_uid(model.uid_root, series_uid, model.version, "sc-series"),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=derived_uid(model.uid_root, series_uid, model.version, f"sc-{column}"),
        instance_number=1 + RESULT_COLUMNS.index(column), manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME, software_versions=model.version,
        pixel_spacing=_spacing(source, zoom),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description="AI hemorrhage evidence - NOT FOR DIAGNOSIS")
    sc.BodyPartExamined = "HEAD"  # a head-CT product: a constant, not the source's text (and Laterality not needed)
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{NOT_FOR_DIAGNOSIS}; {FINDINGS[column].meaning}: P = {probability:.3f}"[:10240]
    sc.DerivationDescription = (f"{MANUFACTURER} {MODEL_NAME} v{model.version}: occlusion-sensitivity map over the "
                                f"brain window; {NOT_FOR_DIAGNOSIS}")[:1024]
    ref = Dataset()
    ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = source.SOPClassUID, source.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def _spacing(source: Dataset, zoom: int) -> Any:
    """(row, column) spacing in mm, as floats (highdicom's hint says int; the standard says DS)."""
    return tuple(float(v) / zoom for v in source.PixelSpacing[:2]) if "PixelSpacing" in source else None


def zoom_for(shape: tuple[int, ...], target: int = 512) -> int:
    """A whole factor that brings a small slice near ``target`` pixels, so the burnt-in text stays
    small beside the anatomy; 1 for a 512 matrix and above."""
    return max(1, target // max(shape[:2]))


def enlarge(gray: np.ndarray, zoom: int) -> np.ndarray:
    return np.kron(gray, np.ones((zoom, zoom), dtype=gray.dtype)) if zoom > 1 else gray


def _orientation(source: Dataset) -> tuple[str, str]:
    """Patient orientation of rows and columns from ImageOrientationPatient (geometry, not text)."""
    cosines = [float(v) for v in source.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])]
    return _direction(cosines[:3]), _direction(cosines[3:])


def _direction(vector: Sequence[float]) -> str:
    axis = int(np.argmax(np.abs(vector)))
    positive, negative = ("L", "R") if axis == 0 else ("P", "A") if axis == 1 else ("H", "F")
    return positive if vector[axis] > 0 else negative
