"""RSNA conventions: label file -> the five columns, ``any`` derived, submission rows, mapping file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hemo_model.data.layout import DataError
from hemo_model.data.rsna import SUBMISSION_TYPES, instance_key, read_labels, submission_rows, with_any

DOTTED = "1.2.826.0.1.3680043.8.498.1"


def _label_file(tmp_path: Path, rows: list[tuple[str, str]]) -> Path:
    path = tmp_path / "labels.csv"
    path.write_text("ID,Label\n" + "".join(f"{i},{v}\n" for i, v in rows))
    return path


def _image(key: str, **values: int) -> list[tuple[str, str]]:
    kinds = ("epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural")
    rows = [(f"{key}_{k}", str(values.get(k, 0))) for k in kinds]
    return rows + [(f"{key}_any", str(max(values.values(), default=0)))]


def test_types_map_to_the_pipeline_columns(tmp_path: Path) -> None:
    rows = _image("ID_12cadc6af", epidural=1) + _image(f"ID_{DOTTED}", intraparenchymal=1, subdural=1)
    rows += _image("ID_0000aaaa", intraventricular=1, subarachnoid=1)
    labels = read_labels(_label_file(tmp_path, rows + rows[:3]))  # repeated identical rows are fine (RSNA stage 2)
    # columns: ich ivh sah sdh edh
    assert labels.get("ID_12cadc6af") == [0, 0, 0, 0, 1]  # RSNA files carry ID_<hex> as SOPInstanceUID
    assert labels.get(DOTTED) == [1, 0, 0, 1, 0]  # a dotted UID gets the ID_ prefix
    assert labels.get("ID_0000aaaa") == [0, 1, 1, 0, 0]
    assert labels.any_mismatch == 0 and labels.get("ID_missing") is None


def test_stored_any_is_checked_not_used(tmp_path: Path) -> None:
    rows = _image("ID_a1", epidural=1)
    rows[-1] = ("ID_a1_any", "0")
    labels = read_labels(_label_file(tmp_path, rows))
    assert labels.get("ID_a1") == [0, 0, 0, 0, 1] and labels.any_mismatch == 1


@pytest.mark.parametrize("bad, message", [
    ([("ID_a1_epidural", "2")], "line 2: Label must be 0 or 1"),
    ([("ID_a1_lung", "0")], "line 2: the ID must be ID_<image>_<type>"),
    (_image("ID_a1")[:4], "has no row for subdural"),
    (_image("ID_a1") + [("ID_a1_epidural", "1")], "line 8: conflicts with an earlier row"),
])
def test_bad_label_files_name_the_line_but_never_the_image(tmp_path: Path, bad: list, message: str) -> None:
    with pytest.raises(DataError, match=message) as caught:
        read_labels(_label_file(tmp_path, bad))
    assert "a1" not in str(caught.value).replace(str(tmp_path), "")


def test_submission_has_six_types_with_any_the_max() -> None:
    probs = np.array([[0.1, 0.2, 0.3, 0.4, 0.05], [0.0, 0.0, 0.0, 0.0, 0.9]])  # ich ivh sah sdh edh
    rows = dict(submission_rows(["ID_x", DOTTED], probs))
    assert len(rows) == 12
    assert rows["ID_x_intraparenchymal"] == pytest.approx(0.1) and rows["ID_x_subdural"] == pytest.approx(0.4)
    assert rows["ID_x_epidural"] == pytest.approx(0.05) and rows["ID_x_any"] == pytest.approx(0.4)
    assert rows[f"ID_{DOTTED}_any"] == pytest.approx(0.9) and rows[f"ID_{DOTTED}_epidural"] == pytest.approx(0.9)
    assert with_any(probs).shape == (2, 6) and SUBMISSION_TYPES[-1] == "any"
    assert instance_key("ID_x") == "ID_x" and instance_key("1.2") == "ID_1.2"


def test_mapping_files_of_both_headers_are_read(tmp_path: Path) -> None:
    """Mapping files of earlier releases have no patient column: read with an empty key."""
    from hemo_model.data.rsna import LEGACY_MAPPING_COLUMNS, MAPPING_COLUMNS, mapping_rows, read_mapping

    old, new = tmp_path / "old.csv", tmp_path / "new.csv"
    old.write_text(",".join(LEGACY_MAPPING_COLUMNS) + "\nID_a,a_0.jpg,1.2,1.2.3,1.2.3.4\n")
    new.write_text(",".join(MAPPING_COLUMNS) + "\nID_b,b_0.jpg,P_0123456789abcdef,1.5,1.5.6,1.5.6.7\n")
    assert read_mapping(old)[("ID_a", "a_0.jpg")]["patient"] == ""
    assert read_mapping(new)[("ID_b", "b_0.jpg")]["patient"] == "P_0123456789abcdef"
    assert list(mapping_rows(read_mapping(old))) == [["ID_a", "a_0.jpg", "", "1.2", "1.2.3", "1.2.3.4"]]
    (tmp_path / "bad.csv").write_text("dirname,ID\n")
    with pytest.raises(DataError, match="not a mapping file"):
        read_mapping(tmp_path / "bad.csv")
