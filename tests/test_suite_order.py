"""The suite's own schedule: the scopes `make test` starts first are scopes of the suite (a renamed module or class
would silently fall back to xdist's order, where one worker ran the end-to-end tests alone for minutes)."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import LONGEST_SCOPES

ROOT = Path(__file__).resolve().parents[1]


def test_every_scope_started_first_is_a_test_module_or_class_of_the_suite():
    assert len(set(LONGEST_SCOPES)) == len(LONGEST_SCOPES)
    for scope in LONGEST_SCOPES:
        module, _, cls = scope.partition("::")
        path = ROOT / module
        assert path.is_file() and path.name.startswith("test_"), scope
        if cls:
            classes = {node.name for node in ast.parse(path.read_text()).body if isinstance(node, ast.ClassDef)}
            assert cls in classes, scope


def test_the_makefile_keeps_the_collected_order():
    assert "--dist loadscope --no-loadscope-reorder" in (ROOT / "Makefile").read_text()
