"""hemo_model.data.dicom on hand-made series: what is skipped and why, z order, series checks, HU, windows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from hemo_model.data.dicom import WINDOWS, group_series, read_header, read_hu, scan_folder, series_key, windowed
from hemo_model.data.synth import window
from hemo_model.data.synth_dicom import Storage
from tests.dicom_files import basic_text_report, hu_volume, jpeg_lossless, rle, series_datasets, uid, write

UNSIGNED = Storage()  # uint16, 12 bits, slope 1, intercept -1024
STORAGES = {
    "unsigned_slope1_intercept-1024": UNSIGNED,
    "signed_slope0.5_intercept-1000": Storage(signed=True, bits_stored=16, slope=0.5, intercept=-1000.0),
    "signed_slope1_intercept0": Storage(signed=True, bits_stored=16, intercept=0.0),
    "monochrome1_unsigned": Storage(monochrome1=True),
    "monochrome1_signed": Storage(signed=True, bits_stored=16, intercept=0.0, monochrome1=True),
}


def _first_pixels(series) -> list[float]:
    """Slice k of hu_volume carries 10 * k in its first pixel: read it back per ordered slice."""
    return [float(read_hu(h.path)[0, 0]) for h in series.slices]


def test_z_order_comes_from_positions_not_names_or_instance_numbers(tmp_path: Path) -> None:
    n = 6
    hu = hu_volume(n)
    shuffled_z = [5, 2, 0, 4, 1, 3]  # slice k of hu lies at z index shuffled_z[k] ...
    order = np.argsort(shuffled_z)
    datasets = series_datasets(hu[np.argsort(order)], name="shuffled", positions=[2.5 * z for z in shuffled_z],
                               instance_numbers=[1, 2, 3, 4, 5, 6])  # ... while InstanceNumber says file order
    names = ["b", "zz.dcm", "0001", "a.DCM", "IM9", "x_y"]
    write(datasets, tmp_path, names)
    (series,) = group_series(scan_folder(tmp_path).slices, 1, 40)
    assert series.positions == sorted(series.positions)
    assert _first_pixels(series) == [10.0 * k for k in range(n)]


@pytest.mark.parametrize("orientation", [(1, 0, 0, 0, 1, 0), (1, 0, 0, 0, -1, 0), (0, 1, 0, 1, 0, 0)],
                         ids=["standard", "flipped_columns", "swapped_axes"])
def test_k0_is_the_lowest_slice_whatever_way_the_normal_points(tmp_path: Path, orientation: tuple) -> None:
    hu = hu_volume(5)
    write(series_datasets(hu, name=f"o{orientation}", orientation=orientation, spacing=3.0), tmp_path)
    (series,) = group_series(scan_folder(tmp_path).slices, 1, 40)
    z = [h.position[2] for h in series.slices]
    assert z == sorted(z)


def test_gap_duplicates_spacing_sizes_and_counts_are_reported(tmp_path: Path) -> None:
    hu = hu_volume(8)
    write(series_datasets(hu[:7], name="gap", positions=[0, 5, 10, 20, 25, 30, 35]), tmp_path / "gap")
    dup = series_datasets(hu[:6], name="dup", positions=[0, 5, 10, 10, 15, 20])
    write(dup, tmp_path / "dup")
    write(series_datasets(hu[:6], name="uneven", positions=[0, 5, 10, 15, 18, 23]), tmp_path / "uneven")
    mixed = series_datasets(hu[:5], name="mixed") + series_datasets(hu_volume(1, size=24), name="mixed", z0=0.0)[:0]
    small = series_datasets(hu_volume(1, size=24), name="mixed-small", positions=[-30 + 5 * 2.5])
    small[0].SeriesInstanceUID = mixed[0].SeriesInstanceUID
    write(mixed + small, tmp_path / "mixed")
    by_name = {name: group_series(scan_folder(tmp_path / name).slices, 5, 6)[0]
               for name in ("gap", "dup", "uneven", "mixed")}
    assert by_name["gap"].issues == ["too_many_slices", "gap"]
    assert by_name["dup"].issues == [] and by_name["dup"].duplicates_dropped == 1
    assert len(by_name["dup"].slices) == 5
    assert by_name["uneven"].issues == ["inconsistent_spacing"]
    assert by_name["mixed"].issues == ["mixed_sizes"]
    assert group_series(scan_folder(tmp_path / "dup").slices, 6, 40)[0].issues == ["too_few_slices"]


@pytest.mark.parametrize("storage", list(STORAGES.values()), ids=list(STORAGES))
def test_hounsfield_round_trip_is_exact(tmp_path: Path, storage: Storage) -> None:
    hu = hu_volume(2)
    if storage.slope == 0.5:
        hu[:, 1, :] += 0.5  # half-HU steps are representable at slope 0.5
    write(series_datasets(hu, name="rt", storage=storage), tmp_path)
    (series,) = group_series(scan_folder(tmp_path).slices, 1, 40)
    ds = pydicom.dcmread(series.slices[0].path)
    assert ds.PixelRepresentation == int(storage.signed)
    assert ds.PhotometricInterpretation == ("MONOCHROME1" if storage.monochrome1 else "MONOCHROME2")
    for k, header in enumerate(series.slices):
        assert np.array_equal(read_hu(header.path), hu[k].astype(np.float32))


def test_padding_value_becomes_air(tmp_path: Path) -> None:
    storage = Storage(signed=True, bits_stored=16, intercept=0.0, padding_value=-2000)
    hu = hu_volume(1)
    mask = np.zeros(hu.shape[1:], dtype=bool)
    mask[:, :4] = True
    from hemo_model.data.synth_dicom import ct_slice

    ds = ct_slice(hu[0], study_uid=uid("p"), series_uid=uid("ps"), sop_uid=uid("pi"), z=0.0, instance=1, phi={},
                  storage=storage, padding_mask=mask)
    assert (ds.pixel_array[mask] == -2000).all()
    write([ds], tmp_path)
    got = read_hu(next(tmp_path.iterdir()))
    assert (got[mask] == -1000.0).all() and np.array_equal(got[~mask], hu[0][~mask])


@pytest.mark.parametrize("compress", [rle, jpeg_lossless], ids=["rle", "jpeg_lossless"])
@pytest.mark.parametrize("storage", [UNSIGNED, STORAGES["signed_slope1_intercept0"]], ids=["unsigned", "signed"])
def test_compressed_series_decode_exactly(tmp_path: Path, compress, storage: Storage) -> None:
    hu = hu_volume(3)
    datasets = [compress(ds) for ds in series_datasets(hu, name="c", storage=storage)]
    write(datasets, tmp_path)
    (series,) = group_series(scan_folder(tmp_path).slices, 1, 40)
    assert pydicom.dcmread(series.slices[0].path).file_meta.TransferSyntaxUID.is_compressed
    assert all(np.array_equal(read_hu(h.path), hu[k]) for k, h in enumerate(series.slices))


def test_windows_follow_the_phantom_convention_exactly() -> None:
    hu = np.linspace(-1200, 3000, 64 * 64).reshape(64, 64).astype(np.float32)
    assert np.array_equal(windowed(hu, ["brain"]), window(hu, 40, 80))
    three = windowed(hu, ["brain", "subdural", "bone"])
    assert three.shape == (64, 64, 3) and three.dtype == np.uint8
    for i, name in enumerate(["brain", "subdural", "bone"]):
        assert np.array_equal(three[..., i], window(hu, *WINDOWS[name]))
    with pytest.raises(ValueError, match="unknown CT window"):
        windowed(hu, ["lung"])


def test_folder_scan_skips_what_is_not_an_axial_ct_image_with_a_reason(tmp_path: Path) -> None:
    hu = hu_volume(4)
    study = uid("mixed-study")
    export = tmp_path / "export"
    write(series_datasets(hu, name="axial-1", study=study), export / "PAT" / "series1")
    write(series_datasets(hu[:3], name="axial-2", study=study), export / "PAT" / "series2", ["1", "2", "3"])
    localizer = series_datasets(hu[:1], name="scout", study=study)[0]
    localizer.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    sagittal = series_datasets(hu[:1], name="sag", study=study, orientation=(0, 1, 0, 0, 0, -1))[0]
    mr = series_datasets(hu[:1], name="mr", study=study, modality="MR")[0]
    write([localizer, sagittal, mr, basic_text_report(study)], export / "PAT" / "other", ["loc", "sag", "mr", "sr"])
    (export / "README.txt").write_text("not dicom")
    truncated = export / "PAT" / "broken.dcm"
    truncated.write_bytes((export / "PAT" / "other" / "mr").read_bytes()[:200])
    scan = scan_folder(export)
    assert scan.files == 4 + 3 + 4 + 2
    assert dict(scan.skipped) == {"localizer": 1, "not_axial": 1, "not_ct": 1, "non_image": 1, "not_dicom": 1,
                                  "unreadable": 1}
    series = group_series(scan.slices, 1, 40)
    assert sorted(len(s.slices) for s in series) == [3, 4]
    assert {s.study_uid for s in series} == {study}
    assert read_header(export / "PAT" / "other" / "sr") == "non_image"


def test_series_key_is_salted_stable_and_dlcv_shaped() -> None:
    key = series_key("1.2.3.4", "salt-a")
    assert key == series_key("1.2.3.4", "salt-a") and len(key) == 10 and int(key, 16) >= 0
    assert key != series_key("1.2.3.4", "salt-b") and key != series_key("1.2.3.5", "salt-a")
    with pytest.raises(ValueError):
        series_key("1.2.3.4", "")


def test_pixel_budget_is_checked_from_the_header_before_decoding(tmp_path: Path) -> None:
    (ds,) = series_datasets(hu_volume(1), name="budget")  # 32 x 32
    write([ds], tmp_path / "fits")
    path = next((tmp_path / "fits").iterdir())
    assert read_header(path, max_pixels=32 * 32).rows == 32
    assert read_header(path, max_pixels=32 * 32 - 1) == "over_pixel_budget"
    ds.NumberOfFrames = 2  # frames count against the budget too (and it is tested before multi_frame)
    write([ds], tmp_path / "frames")
    assert read_header(next((tmp_path / "frames").iterdir()), max_pixels=32 * 32 + 1) == "over_pixel_budget"
    (bloated,) = series_datasets(hu_volume(1, size=64), name="bloated")
    bloated.Rows = bloated.Columns = 8  # a small header on 64 x 64 x 2 bytes of pixel data
    write([bloated], tmp_path / "bloated")
    assert read_header(next((tmp_path / "bloated").iterdir()), max_pixels=8 * 8) == "over_pixel_budget"


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # 'yes ' and MAYBE, as careless exports write them
@pytest.mark.parametrize("value, burned", [(None, False), ("NO", False), ("YES", True), ("yes ", True),
                                           ("MAYBE", True)])
def test_burned_in_annotation_marks_the_whole_series(tmp_path: Path, value: str | None, burned: bool) -> None:
    datasets = series_datasets(hu_volume(4), name=f"burned-{value}")
    if value is not None:
        datasets[2].BurnedInAnnotation = value  # one slice of four
    write(datasets, tmp_path)
    scan = scan_folder(tmp_path)
    (series,) = group_series(scan.slices, 1, 40, scan.burned_in_series)
    assert series.burned_in is burned and len(series.slices) == 4


def test_a_burned_in_file_that_is_not_a_slice_still_marks_its_series(tmp_path: Path) -> None:
    datasets = series_datasets(hu_volume(4), name="scout-burned")
    datasets[0].ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    datasets[0].BurnedInAnnotation = "YES"
    write(datasets, tmp_path)
    scan = scan_folder(tmp_path)
    assert scan.skipped == {"localizer": 1}
    assert group_series(scan.slices, 1, 40)[0].burned_in is False  # the slices alone do not say it ...
    assert group_series(scan.slices, 1, 40, scan.burned_in_series)[0].burned_in is True  # ... the scan does


def test_files_that_cannot_be_looked_at_are_counted_not_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import os

    write(series_datasets(hu_volume(3), name="ok"), tmp_path / "ok")
    write(series_datasets(hu_volume(2), name="denied"), tmp_path / "Doe^John")
    real_stat = os.stat

    def stat(path: object, *args: object, **kwargs: object) -> os.stat_result:
        if "Doe^John" in os.fspath(path):  # type: ignore[arg-type]
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))  # type: ignore[arg-type]
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", stat)
    scan = scan_folder(tmp_path)
    assert scan.files == 5 and scan.skipped == {"unreadable": 2} and len(scan.slices) == 3


def test_a_series_subgroups_come_from_its_headers_in_closed_vocabularies(tmp_path: Path) -> None:
    """Vendor group, thickness band (SliceThickness, else the spacing) and matrix band: no free
    header text (the model name, an institution) reaches the row."""
    from hemo_model.data.dicom import series_subgroups

    datasets = series_datasets(hu_volume(4), name="siemens", spacing=1.0)
    for ds in datasets:
        ds.Manufacturer, ds.ManufacturerModelName = "SIEMENS", "SOMATOM at St. Elsewhere"
        ds.SliceThickness = 0.625
    write(datasets, tmp_path / "a")
    unlabelled = series_datasets(hu_volume(4), name="no-thickness", spacing=2.5)
    for ds in unlabelled:
        ds.Manufacturer = "Acme Imaging, Ward 4"
        del ds.SliceThickness
    write(unlabelled, tmp_path / "b")
    rows = [series_subgroups(s) for s in group_series(scan_folder(tmp_path).slices, 1, 40)]
    assert {r["scanner"]: r["thickness"] for r in rows} == {"Siemens": "0-1.5mm", "other": "1.5-3mm"}
    assert {r["matrix"] for r in rows} == {"<512"}


def test_a_malformed_slice_thickness_is_unknown_not_a_skipped_slice(tmp_path: Path) -> None:
    from pydicom.dataelem import RawDataElement

    datasets = series_datasets(hu_volume(3), name="bad-thickness")
    for ds in datasets:  # written as raw bytes: pydicom refuses to set a DS that is not a number
        ds[0x00180050] = RawDataElement(0x00180050, "DS", 6, b"thick ", 0, True, True)
    write(datasets, tmp_path)
    scan = scan_folder(tmp_path)
    assert len(scan.slices) == 3 and {h.thickness_mm for h in scan.slices} == {None}
