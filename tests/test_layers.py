# SPDX-License-Identifier: Apache-2.0
"""The floor plan of shared/DESIGN.md, read from the imports (in-function ones included): the import-linter
contracts in pyproject.toml (the layers top to bottom, the commands as siblings) are kept, and no module of the
package imports itself back through others (a circle)."""
from __future__ import annotations

from pathlib import Path

import networkx as nx
import pytest

grimp = pytest.importorskip("grimp", reason="pip install 'exporter[test]' (import-linter brings grimp)")
ROOT = Path(__file__).resolve().parents[1]


def test_the_layer_contracts_are_kept(monkeypatch):
    from importlinter.cli import EXIT_STATUS_SUCCESS, lint_imports

    monkeypatch.chdir(ROOT)  # the contracts are read from pyproject.toml here
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml")) == EXIT_STATUS_SUCCESS


def test_no_import_circles():
    graph = grimp.build_graph("exporter")
    edges = nx.DiGraph((m, i) for m in graph.modules for i in graph.find_modules_directly_imported_by(m))
    circles = {frozenset(c) for c in nx.strongly_connected_components(edges) if len(c) > 1}
    assert circles == set(), f"import circles: {[sorted(c) for c in circles]}"
