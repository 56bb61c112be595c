"""The package is imported by its name: ``lr`` stays the learning rate (``lr=`` and ``--lr`` appear beside it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def aliases_of_longrange(source: str) -> set[str]:
    """The names `source` binds the longrange package to with ``import longrange as NAME``."""
    return {
        alias.asname
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Import)
        for alias in node.names
        if alias.name == "longrange" and alias.asname
    }


def test_no_module_imports_longrange_as_lr():
    offenders = [
        str(path.relative_to(ROOT))
        for folder in ("src", "tests", "benchmarks")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if "lr" in aliases_of_longrange(path.read_text())
    ]
    assert offenders == []


def test_the_check_sees_the_alias():
    assert aliases_of_longrange("import torch\nimport longrange as lr  # noqa: E402\n") == {"lr"}
    assert aliases_of_longrange("import longrange\n") == set()
