"""Hand-made DICOM for the import tests: CT series with any storage, plus the files an export
mixes in (localizers, reports, other modalities), and JPEG-Lossless / RLE compression.

JPEG Lossless has no encoder in pydicom 3 and the packages that have one weigh 40-80 MB
(python-gdcm, imagecodecs), so :func:`jpeg_lossless_sv1` writes the format itself: process 14,
selection value 1 (left neighbour predictor), one fixed Huffman table. It is checked by decoding
with the import's own decoder (pylibjpeg-libjpeg) to the exact stored values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hemo_model.data.synth_dicom import Storage, ct_slice

PHI = {"PatientName": "Testfake^Casimir", "PatientID": "TST-000123", "PatientBirthDate": "19500101"}


def uid(*parts: object) -> str:
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[str(p) for p in parts]))


def hu_volume(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """Integer HU in -1000..2000 whose slices differ (slice k carries k in its first pixel row)."""
    rng = np.random.default_rng(seed)
    volume = rng.integers(-1000, 2000, (n, size, size)).astype(np.float64)
    volume[:, 0, 0] = np.arange(n) * 10.0
    return volume


def series_datasets(hu: np.ndarray, *, name: str, storage: Storage = Storage(), spacing: float = 2.5,
                    z0: float = -30.0, positions: Sequence[float] | None = None, study: str | None = None,
                    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0), modality: str = "CT",
                    instance_numbers: Sequence[int] | None = None, patient_id: str | None = None) -> list:
    """One series: slice k of ``hu`` at position ``positions[k]`` (default z0 + k * spacing), of the
    patient ``patient_id`` (default PHI's; "" for none)."""
    study = study or uid(name, "study")
    zs = list(positions) if positions is not None else [z0 + k * spacing for k in range(len(hu))]
    normal = np.cross(orientation[:3], orientation[3:])
    datasets = []
    for k, z in enumerate(zs):
        position = (np.array([-8.0, -8.0, 0.0]) + z * normal).tolist()
        datasets.append(ct_slice(hu[k], study_uid=study, series_uid=uid(name, "series"), sop_uid=uid(name, "sop", k),
                                 z=z, position=position, orientation=orientation, instance=(
                                     instance_numbers[k] if instance_numbers is not None else k + 1),
                                 phi=PHI if patient_id is None else {**PHI, "PatientID": patient_id},
                                 storage=storage, modality=modality))
    return datasets


def write(datasets: Sequence, folder: Path, names: Sequence[str] | None = None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / (names[i] if names is not None else f"{ds.SOPInstanceUID}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def rle(ds: object) -> object:
    from pydicom.uid import RLELossless

    ds.compress(RLELossless, encoding_plugin="pydicom", generate_instance_uid=False)  # type: ignore[attr-defined]
    return ds


def jpeg_lossless(ds: object) -> object:
    """Re-encode ``ds``'s pixel data as JPEG Lossless SV1 (in place)."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    frame = jpeg_lossless_sv1(ds.pixel_array, ds.BitsStored)  # type: ignore[attr-defined]
    ds.PixelData = encapsulate([frame])  # type: ignore[attr-defined]
    ds["PixelData"].VR = "OB"  # type: ignore[index]
    ds["PixelData"].is_undefined_length = True  # type: ignore[index]
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1  # type: ignore[attr-defined]
    return ds


def jpeg_lossless_sv1(pixels: np.ndarray, precision: int = 16) -> bytes:
    """A JPEG Lossless (ITU T.81 process 14, predictor 1) codestream of a 2-D integer image."""
    rows, cols = pixels.shape
    mask = (1 << precision) - 1
    values = pixels.astype(np.int64) & mask  # signed data: the two's complement bit pattern
    predicted = np.empty_like(values)
    predicted[:, 1:] = values[:, :-1]  # left neighbour
    predicted[1:, 0] = values[:-1, 0]  # first column: the sample above
    predicted[0, 0] = 1 << (precision - 1)
    diff = (values - predicted) & 0xFFFF
    diff = np.where(diff > 32768, diff - 65536, diff)  # modulo 2^16 into -32767..32768

    bits: list[str] = []
    for d in diff.ravel().tolist():
        size = 16 if d == 32768 else int(abs(d)).bit_length()
        bits.append(format(size, "05b"))  # fixed table: category s has the 5-bit code s
        if 0 < size < 16:
            bits.append(format(d if d > 0 else d + (1 << size) - 1, f"0{size}b"))
    stream = "".join(bits)
    stream += "1" * (-len(stream) % 8)
    data = bytearray()
    for i in range(0, len(stream), 8):
        byte = int(stream[i:i + 8], 2)
        data.append(byte)
        if byte == 0xFF:
            data.append(0x00)  # byte stuffing

    def segment(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + (len(body) + 2).to_bytes(2, "big") + body

    sof = bytes([precision]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0])
    counts = [0] * 16
    counts[4] = 17  # 17 codes of length 5: categories 0..16
    dht = bytes([0x00]) + bytes(counts) + bytes(range(17))
    sos = bytes([1, 1, 0x00, 1, 0, 0])  # one component, table 0, predictor 1, Se 0, Ah/Al 0
    return (b"\xff\xd8" + segment(0xC3, sof) + segment(0xC4, dht) + segment(0xDA, sos) + bytes(data)
            + b"\xff\xd9")


def basic_text_report(study: str) -> object:
    """A Basic Text SR (no pixel data), as exports put beside the images."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence as DicomSequence
    from pydicom.uid import BasicTextSRStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = BasicTextSRStorage
    meta.MediaStorageSOPInstanceUID = uid(study, "sr")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta, ds.preamble = meta, b"\0" * 128
    ds.SOPClassUID, ds.SOPInstanceUID = BasicTextSRStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, uid(study, "sr-series")
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "SR", 99, 1
    ds.ValueType, ds.ContinuityOfContent = "CONTAINER", "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    title = Dataset()
    title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning = "18748-4", "LN", "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = DicomSequence([title])
    item = Dataset()
    item.RelationshipType, item.ValueType, item.TextValue = "CONTAINS", "TEXT", "No acute findings."
    ds.ContentSequence = DicomSequence([item])
    for key, value in PHI.items():
        setattr(ds, key, value)
    return ds
