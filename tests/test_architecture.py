"""The code's rooms as a checked contract: the import-linter contracts of pyproject.toml (layers,
a plain ML library, a light orchestration layer, independent steps) hold, and no module of the
project imports itself back through another."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

REPO = Path(__file__).resolve().parents[1]


def test_the_layer_contracts_hold() -> None:
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_no_import_cycle() -> None:
    graph = grimp.build_graph("hemo_model", "hemo_pipeline")
    cycles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if imported in graph.modules and graph.chain_exists(importer=imported, imported=module):
                cycles.append(f"{module} -> {' -> '.join(graph.find_shortest_chain(imported, module) or ())}")
    assert cycles == []
