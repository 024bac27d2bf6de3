"""Shared, session-scoped fixtures: a tiny synthetic data set (and, later, servers).

Everything is generated into pytest's temp folders; tests that change data work on a copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hemo_model.synth import generate_dataset

TINY = {"train_patients": 4, "test_patients": 2, "image_size": 64, "seed": 7}


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small valid DLCV data set (4 train / 2 test patients, 64 px). Treat as read-only."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    generate_dataset(root, **TINY)
    return root


@pytest.fixture
def data_copy(tiny_data: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny data set that a test may corrupt."""
    target = tmp_path / "data"
    shutil.copytree(tiny_data, target)
    return target
