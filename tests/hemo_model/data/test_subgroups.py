"""subgroups.csv: closed vocabularies from DICOM headers, a strict reader, groups that add up."""

from __future__ import annotations

from pathlib import Path

import pytest

from hemo_model.data.layout import DataError
from hemo_model.data.subgroups import (
    SUBGROUPS_FILE,
    by_group,
    read_subgroups,
    scanner_group,
    size_band,
    thickness_band,
    write_subgroups,
)


@pytest.mark.parametrize(("manufacturer", "model", "group"), [
    ("GE MEDICAL SYSTEMS", "LightSpeed VCT", "GE"),
    ("GE", "", "GE"),
    ("SIEMENS", "SOMATOM Definition AS", "Siemens"),
    ("Philips", "iCT 256", "Philips"),
    ("TOSHIBA", "Aquilion", "Canon"),
    ("Canon Medical Systems", "Aquilion ONE", "Canon"),
    ("  united   imaging ", "uCT 760", "United Imaging"),
    ("St. Elsewhere Radiology, Ward 4 (Dr Smith)", "x", "other"),  # free text never reaches the file
    ("Gemini Imaging", "", "other"),  # "ge" inside a word is not GE
    ("Cambridge Medical Ltd", "", "other"),  # nor "ge medical" across words
    ("GE Healthcare", "Revolution", "GE"),
    ("", "SOMATOM", "unknown"),
    ("hemo-pipeline", "Phantom-B", "Phantom-B"),
    ("hemo-pipeline", "Station 7 of John Doe", "other"),
])
def test_a_manufacturer_maps_to_a_closed_vocabulary(manufacturer: str, model: str, group: str) -> None:
    assert scanner_group(manufacturer, model) == group


@pytest.mark.parametrize(("mm", "band"), [(0.625, "0-1.5mm"), (1.5, "0-1.5mm"), (1.51, "1.5-3mm"), (3.0, "1.5-3mm"),
                                          (5.0, "3-5mm"), (5.01, "5mm+"), (10.0, "5mm+"), (None, "unknown"),
                                          (0.0, "unknown"), (float("nan"), "unknown")])
def test_thickness_bands_include_their_upper_bound(mm: float | None, band: str) -> None:
    assert thickness_band(mm) == band


def test_size_bands() -> None:
    assert (size_band(512, 512), size_band(256, 256), size_band(512, 768), size_band(1024, 1024)) == (
        "512", "<512", ">512", ">512")
    assert (size_band(512, 400), size_band(500, 400)) == ("512", "<512")  # by the larger side


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / SUBGROUPS_FILE).write_text(text)
    return tmp_path


def test_round_trip_fills_a_missing_column_with_unknown(tmp_path: Path) -> None:
    write_subgroups(tmp_path / SUBGROUPS_FILE, {"ID_b": {"scanner": "GE", "thickness": "3-5mm"},
                                                "ID_a": {"scanner": "Phantom-A"}})
    assert (tmp_path / SUBGROUPS_FILE).read_text().splitlines() == [
        "dirname,scanner,thickness", "ID_a,Phantom-A,unknown", "ID_b,GE,3-5mm"]
    assert read_subgroups(tmp_path) == {"ID_a": {"scanner": "Phantom-A", "thickness": "unknown"},
                                        "ID_b": {"scanner": "GE", "thickness": "3-5mm"}}


def test_no_file_means_no_subgroups(tmp_path: Path) -> None:
    assert read_subgroups(tmp_path) == {}


@pytest.mark.parametrize(("text", "says"), [
    ("dirname,scanner\nID_a,=HYPERLINK(\"x\")\n", "row 2: scanner must be"),  # a spreadsheet formula
    ("dirname,scanner\nID_a,\"GE, Ward 4\"\n", "row 2: scanner must be"),  # a comma: free text
    ("dirname,scanner\nID_a,\"GE\nX\"\n", "row 2: scanner must be"),  # a line break inside a value
    ("dirname,scanner\nID_a,GE\nID_a,Siemens\n", "row 3: ID_a is listed twice"),
    ("dirname,scanner\n../x,GE\n", "row 2: dirname must be"),
    ("dirname,scanner\nID_a,GE,extra\n", "row 2: 3 fields, expected 2"),
    ("dirname,Scanner\nID_a,GE\n", "the header must be"),
    ("dirname\nID_a\n", "the header must be"),
    ("dirname,scanner,scanner\nID_a,GE,GE\n", "the header must be"),
])
def test_a_malformed_file_is_refused_naming_the_row(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(DataError) as caught:
        read_subgroups(_write(tmp_path, text))
    assert says in str(caught.value) and SUBGROUPS_FILE in str(caught.value)


def test_groups_of_each_column_add_up_to_all_exams() -> None:
    groups = {"ID_a": {"scanner": "GE", "thickness": "3-5mm"}, "ID_b": {"scanner": "Siemens"},
              "ID_c": {"scanner": "GE", "thickness": "0-1.5mm"}}
    found = by_group(["ID_a", "ID_b", "ID_c", "ID_d"], groups)  # ID_d has no row
    assert found == {("scanner", "GE"): [0, 2], ("scanner", "Siemens"): [1], ("scanner", "unknown"): [3],
                     ("thickness", "0-1.5mm"): [2], ("thickness", "3-5mm"): [0], ("thickness", "unknown"): [1, 3]}
    assert by_group(["ID_a"], {}) == {}


def test_every_value_the_writers_emit_is_one_the_reader_accepts(tmp_path: Path) -> None:
    """The import writes these values; the next import, validate and evaluate read them back."""
    from hemo_model.data.subgroups import PHANTOM_SCANNERS, UNKNOWN, VENDORS

    values = {*(g for g, _ in VENDORS), *PHANTOM_SCANNERS, UNKNOWN, "other",
              *(thickness_band(mm) for mm in (None, 0.5, 2.0, 4.0, 5.0, 7.5)),
              *(size_band(n, n) for n in (256, 512, 768))}
    groups = {f"ID_{i:04d}": {"value": v} for i, v in enumerate(sorted(values))}
    write_subgroups(tmp_path / SUBGROUPS_FILE, groups)
    assert read_subgroups(tmp_path) == groups and "5mm+" in values


def test_a_spreadsheets_byte_order_mark_is_read(tmp_path: Path) -> None:
    (tmp_path / SUBGROUPS_FILE).write_bytes("dirname,site\nID_a,North\n".encode("utf-8-sig"))
    assert read_subgroups(tmp_path) == {"ID_a": {"site": "North"}}
