"""`hemo split`: the role of every labelled patient, written for people to read."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hemo_pipeline.cli import main


def test_split_writes_roles_and_counts_and_ignores_row_order(data_copy: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no params.yaml here: the code's default salt
    args = ["--set", "split.val_fraction=0.3", "--set", "split.gate_fraction=0.3"]
    assert main(["split", "--data", str(data_copy), "--out", str(tmp_path / "a.json"), *args]) == 0
    first = json.loads((tmp_path / "a.json").read_text())
    assert set(first["roles"].values()) <= {"train", "val", "gate"} and len(first["roles"]) == 4
    assert sum(first["counts"].values()) == 4 and first["split"]["salt"] == "hemo-roles-v1"
    out = capsys.readouterr().out
    assert "split of 4 patients" in out
    jobs = [line.strip() for line in out.splitlines() if line.startswith("  ")]
    assert [line.split(":")[0] for line in jobs] == ["train", "val", "gate"]
    assert "cannot judge" in jobs[2] and "`hemo gate` refuses" in jobs[2]  # 4 patients: far below the minimum gate
    assert first["jobs"] == [f"  {line}" for line in jobs]

    # Same patients in another row order, one patient withdrawn: nobody else changes role.
    with (data_copy / "train.csv").open() as handle:
        header, *rows = list(csv.reader(handle))
    dropped = rows[0][0]
    kept = [r for r in reversed(rows) if r[0] != dropped]
    with (data_copy / "train.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([header, *kept])
    assert main(["split", "--data", str(data_copy), "--out", str(tmp_path / "b.json"), *args]) == 0
    second = json.loads((tmp_path / "b.json").read_text())
    assert second["roles"] == {k: v for k, v in first["roles"].items() if k != dropped}


def test_split_without_labels_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["split", "--data", str(tmp_path)]) == 2
    assert "train.csv not found" in capsys.readouterr().err


def test_split_puts_every_scan_of_a_patient_in_one_role(data_copy: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str],
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with (data_copy / "train.csv").open() as handle:
        dirnames = sorted({row[0] for row in list(csv.reader(handle))[1:]})
    (data_copy / "series.csv").write_text("dirname,patient,pixels_sha256\n"
                                          + "".join(f"{d},P_{i // 2},\n" for i, d in enumerate(dirnames)))
    for salt in ("a", "b", "c", "d", "e"):
        assert main(["split", "--data", str(data_copy), "--out", "s.json", "--set", f"split.salt={salt}",
                     "--set", "split.val_fraction=0.3", "--set", "split.gate_fraction=0.3"]) == 0
        report = json.loads(Path("s.json").read_text())
        assert report["roles"][dirnames[0]] == report["roles"][dirnames[1]]
        assert report["roles"][dirnames[2]] == report["roles"][dirnames[3]]
        assert sum(report["patient_counts"].values()) == 2 and sum(report["counts"].values()) == 4
    assert "split of 2 patients (4 scans" in capsys.readouterr().out
