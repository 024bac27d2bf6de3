"""series.csv: patient keys that put every scan of a person in one role, and pixel fingerprints
that recognise a scan whatever its folder is called."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemo_model.data.dicom import series_key
from hemo_model.data.layout import DataError
from hemo_model.data.patients import load_split, patients_by_role
from hemo_model.data.roles import RoleSpec, role_of
from hemo_model.data.series_index import (
    SERIES_COLUMNS,
    SERIES_FILE,
    SeriesRecord,
    index_rows,
    patient_key,
    patients_of,
    pixel_fingerprint,
    read_series_index,
)


def _write_index(root: Path, rows: list[list[str]], header: tuple[str, ...] = SERIES_COLUMNS) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / SERIES_FILE).write_text("\n".join(",".join(r) for r in [list(header), *rows]) + "\n")


def _labelled(root: Path, dirnames: list[str], slices: int = 3) -> None:
    rows = ["dirname,ID,ich,ivh,sah,sdh,edh"]
    for dirname in dirnames:
        folder = root / "train" / dirname
        folder.mkdir(parents=True)
        key = dirname.removeprefix("ID_")
        for k in range(slices):
            Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(folder / f"{key}_{k}.jpg")
            rows.append(f"{dirname},{key}_{k}.jpg,0,0,0,0,0")
    (root / "train.csv").write_text("\n".join(rows) + "\n")


def test_patient_key_is_stable_salted_and_reveals_no_id() -> None:
    key = patient_key("TST-000123", "salt-a")
    assert key == patient_key("TST-000123", "salt-a") and key.startswith("P_") and len(key) == 18
    assert "000123" not in key
    assert key != patient_key("TST-000123", "salt-b") and key != patient_key("TST-000124", "salt-a")
    assert key[2:] != series_key("TST-000123", "salt-a")[:16]  # another domain than series names
    with pytest.raises(ValueError):
        patient_key("TST-000123", "")


def test_pixel_fingerprint_follows_values_and_order_not_dtype() -> None:
    rng = np.random.default_rng(0)
    volume = [rng.integers(-1000, 2000, (16, 16)).astype(np.float32) for _ in range(4)]
    digest = pixel_fingerprint(volume)
    assert digest == pixel_fingerprint([v.astype(np.int16) for v in volume])  # same values, other storage
    changed = [v.copy() for v in volume]
    changed[2][5, 5] += 1
    assert pixel_fingerprint(changed) != digest
    assert pixel_fingerprint(volume[::-1]) != digest
    assert pixel_fingerprint([v.reshape(8, 32) for v in volume]) != digest  # shape is part of it
    assert len(digest) == 64 and int(digest, 16) >= 0


def test_index_round_trips_and_is_optional(tmp_path: Path) -> None:
    assert read_series_index(tmp_path) == {}
    records = [SeriesRecord("ID_b", "P_1", "a" * 64), SeriesRecord("ID_a", "P_1", None), SeriesRecord("ID_c", "ID_c")]
    _write_index(tmp_path, index_rows(records))
    index = read_series_index(tmp_path)
    assert index == {r.dirname: r for r in records}
    assert patients_of(["ID_a", "ID_c", "ID_z"], index) == {"ID_a": "P_1", "ID_c": "ID_c", "ID_z": "ID_z"}


@pytest.mark.parametrize("rows, header, message", [
    ([["ID_a", "P_1", ""]], ("dirname", "patient"), "header must be dirname,patient,pixels_sha256"),
    ([["../x", "P_1", ""]], SERIES_COLUMNS, "row 2: dirname must be a series folder name"),
    ([["ID_a", "Doe^John", ""]], SERIES_COLUMNS, "row 2: patient must be a key"),
    ([["ID_a", "P_1", "XYZ"]], SERIES_COLUMNS, "row 2: pixels_sha256 must be 64 lowercase hex"),
    ([["ID_a", "P_1", ""], ["ID_a", "P_2", ""]], SERIES_COLUMNS, "row 3: ID_a is listed twice"),
    ([["ID_a", "P_1", "b" * 64], ["ID_c", "P_2", "b" * 64]], SERIES_COLUMNS, "row 3: ID_c has the same pixels as ID_a"),
    ([["ID_a", "P_1"]], SERIES_COLUMNS, "row 2: 2 fields, expected 3"),
])
def test_a_malformed_index_is_refused_naming_the_row(tmp_path: Path, rows: list[list[str]],
                                                     header: tuple[str, ...], message: str) -> None:
    _write_index(tmp_path, rows, header)
    with pytest.raises(DataError, match="series.csv") as caught:
        read_series_index(tmp_path)
    assert message in str(caught.value)


def test_every_scan_of_a_patient_shares_one_role(tmp_path: Path) -> None:
    """Three scans per person, 60 people: whatever the split, no person has scans in two roles; the
    loaders carry the key and fingerprint of each scan."""
    rng = random.Random(0)
    people = {f"P_{i:04d}": [f"ID_{i:04d}x{j}" for j in range(3)] for i in range(60)}
    dirnames = [d for scans in people.values() for d in scans]
    rng.shuffle(dirnames)
    _labelled(tmp_path, dirnames)
    _write_index(tmp_path, index_rows(SeriesRecord(d, p, f"{n:064x}") for p, scans in people.items()
                                      for n, d in enumerate(scans, start=int(p[2:]) * 3)))
    scans = load_split(tmp_path)
    assert {s.dirname: s.patient_key for s in scans} == {d: p for p, ds in people.items() for d in ds}
    assert all(s.pixels_sha256 and len(s.pixels_sha256) == 64 for s in scans)
    for salt in ("a", "b", "c"):
        spec = RoleSpec(salt, 0.2, 0.3)
        grouped = patients_by_role(scans, spec)
        role_of_scan = {s.dirname: role for role, group in grouped.items() for s in group}
        for person, folders in people.items():
            assert {role_of_scan[d] for d in folders} == {role_of(person, spec)}
        assert sum(len(g) for g in grouped.values()) == len(dirnames)


def test_without_an_index_each_folder_is_its_own_patient(tmp_path: Path) -> None:
    dirnames = [f"ID_{i:04d}" for i in range(30)]
    _labelled(tmp_path, dirnames)
    spec = RoleSpec("s", 0.2, 0.3)
    grouped = patients_by_role(load_split(tmp_path), spec)
    assert {s.dirname: role for role, group in grouped.items() for s in group} == {d: role_of(d, spec) for d in dirnames}
    assert all(s.patient_key == s.dirname and s.pixels_sha256 is None for g in grouped.values() for s in g)
