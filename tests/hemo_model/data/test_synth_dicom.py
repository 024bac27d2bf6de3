"""The phantom as DICOM: real CT headers (geometry, storage, fake identifying data), HU as drawn,
RSNA labels as rendered, deterministic, and opaque names on request."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pydicom
import pytest

from hemo_model.data.dicom import hounsfield
from hemo_model.data.synth import render_slice, sample_patient
from hemo_model.data.synth_dicom import LABELS_NAME, fake_phi, generate_dicom_dataset, patient_series

SEED, SIZE = 2, 48


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth-dicom")
    generate_dicom_dataset(root, train_patients=2, test_patients=1, image_size=SIZE, seed=SEED)
    return root


def test_series_are_ct_with_real_geometry_storage_and_fake_identifiers() -> None:
    for index, (signed, intercept) in enumerate([(0, -1024.0), (1, 0.0)]):
        datasets, labels = patient_series(SEED, "train", index, SIZE)
        patient = sample_patient(SEED, "train", index)
        axial, scout = datasets[:-1], datasets[-1]
        assert len(axial) == len(labels) == patient.n_slices and "LOCALIZER" in scout.ImageType
        assert len({ds.SeriesInstanceUID for ds in axial}) == 1 and scout.SeriesInstanceUID != axial[0].SeriesInstanceUID
        assert len({ds.StudyInstanceUID for ds in datasets}) == 1
        z = [float(ds.ImagePositionPatient[2]) for ds in axial]
        assert np.allclose(np.diff(z), 5.0) and [float(v) for v in axial[0].ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        first = axial[0]
        assert first.Modality == "CT" and first.PixelRepresentation == signed and first.RescaleIntercept == intercept
        assert float(first.PixelSpacing[0]) == pytest.approx(220.0 / SIZE, abs=1e-6)
        phi = fake_phi(SEED, "train", index)
        assert str(first.PatientName) == phi["PatientName"] and first.InstitutionName == phi["InstitutionName"]
        k = patient.n_slices // 2
        hu, drawn = hounsfield(axial[k]), render_slice(patient, k, SIZE).hu
        centre = slice(SIZE // 4, 3 * SIZE // 4)  # inside the field-of-view disc (outside may be padding)
        assert np.array_equal(hu[centre, centre], np.clip(np.rint(drawn), -1024, 3071)[centre, centre])


def test_label_file_is_rsna_shaped_and_follows_the_rendered_labels(exported: Path) -> None:
    with (exported / LABELS_NAME).open() as handle:
        rows = dict(csv.reader(handle))
    assert rows.pop("ID") == "Label"
    datasets, labels = patient_series(SEED, "train", 1, SIZE)
    for ds, lab in zip(datasets[:-1], labels):
        key = f"ID_{ds.SOPInstanceUID}"
        assert int(rows[f"{key}_intraparenchymal"]) == lab["ich"] and int(rows[f"{key}_epidural"]) == lab["edh"]
        assert int(rows[f"{key}_any"]) == max(lab.values())
    n_slices = sum(sample_patient(SEED, "train", i).n_slices for i in range(2))
    assert len(rows) == 6 * n_slices


def test_export_tree_is_deterministic_and_shuffled_names_are_opaque(exported: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_dicom_dataset(again, train_patients=2, test_patients=1, image_size=SIZE, seed=SEED)
    files = sorted(p.relative_to(exported) for p in exported.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((exported / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert Path("train") / fake_phi(SEED, "train", 0)["PatientID"] / "CT2" / "IM0001.dcm" in files

    flat = tmp_path / "flat"
    generate_dicom_dataset(flat, train_patients=1, test_patients=0, image_size=SIZE, seed=SEED, shuffle_names=True)
    names = [p for p in (flat / "train").iterdir()]
    assert all(p.is_file() and "." not in p.name and len(p.name) == 16 for p in names)
    axial = sorted((pydicom.dcmread(p) for p in names if "AXIAL" in pydicom.dcmread(p).ImageType),
                   key=lambda ds: float(ds.ImagePositionPatient[2]))
    numbers = [int(ds.InstanceNumber) for ds in axial]
    assert sorted(numbers) == list(range(1, len(axial) + 1)) and numbers != sorted(numbers)
