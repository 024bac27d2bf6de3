"""The suite's own scheduling: the files conftest starts first exist and do start first."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import LONGEST_FIRST

ROOT = Path(__file__).resolve().parents[1]


def test_every_file_started_first_exists() -> None:
    missing = [path for path in LONGEST_FIRST if not (ROOT / path).is_file()]
    assert not missing, f"tests/conftest.py LONGEST_FIRST names files that do not exist: {missing}"


def test_the_longest_files_go_first_and_the_rest_keep_their_order() -> None:
    from types import SimpleNamespace

    from tests.conftest import pytest_collection_modifyitems

    collected = ["tests/a/test_x.py::test_1", f"{LONGEST_FIRST[1]}::test_2", "tests/a/test_x.py::test_3",
                 f"{LONGEST_FIRST[0]}::test_4", "tests/b/test_y.py::test_5", f"{LONGEST_FIRST[0]}::test_6"]
    items = [SimpleNamespace(nodeid=nodeid) for nodeid in collected]
    pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]
    assert [item.nodeid.rsplit("_", 1)[1] for item in items] == ["4", "6", "2", "1", "3", "5"]
