"""attention/ stands below model/: arrows run model -> attention -> memory/config (docs/architecture.md)."""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import longrange.attention

# packages attention may not import: the model and everything built on it
_ABOVE = ("longrange.model", "longrange.train", "longrange.eval", "longrange.bench", "longrange.cli")


def _modules() -> list[tuple[str, Path]]:
    """Every module under longrange.attention (packages included), with its source file."""
    found = [("longrange.attention", Path(longrange.attention.__file__))]
    for info in pkgutil.walk_packages(longrange.attention.__path__, prefix="longrange.attention."):
        spec = importlib.util.find_spec(info.name)
        found.append((info.name, Path(spec.origin)))
    return found


def _imported(name: str, path: Path) -> set[str]:
    """Absolute names of every module `path` imports, at top level or inside a function; relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_walk_finds_the_lsh_package_and_positions():
    names = {name for name, _ in _modules()}
    assert {"longrange.attention.positions", "longrange.attention.xl", "longrange.attention.knn"} <= names


def test_attention_imports_nothing_from_model():
    offenders = {
        name: sorted(m for m in _imported(name, path) if m.startswith(_ABOVE))
        for name, path in _modules()
        if any(m.startswith(_ABOVE) for m in _imported(name, path))
    }
    assert offenders == {}


def test_the_import_check_sees_a_relative_import_of_model(tmp_path):
    # guards the checker itself: a relative `from ..model import x` inside attention/ resolves to longrange.model
    path = tmp_path / "fake.py"
    path.write_text("def f():\n    from ..model.positions import AxialPositions\n")
    assert "longrange.model.positions" in _imported("longrange.attention.fake", path)
