"""Imports point one way: the layers of docs/architecture.md ("Layers"), checked for every module of longrange.

Every module under src/longrange is parsed (imports at module level and inside functions; what an
``if TYPE_CHECKING:`` block imports is for type checkers only and is left out). A module may import its own
package and the packages of the layers below its own; never a package of its own layer or of one above.
An import inside a function must be of an optional third-party package (`OPTIONAL`) or listed in `DEFERRED` with
its reason, and must carry a comment that says why. The modules' import graph has no cycle.
"""

from __future__ import annotations

import ast
import graphlib
import io
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "longrange"

# Top to bottom; each entry is a package under longrange/ (or a module directly in it), and "longrange" is the
# package itself (longrange/__init__.py, the public API). The same picture is in docs/architecture.md ("Layers").
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cli",),
    ("commands",),
    ("repro",),
    ("compare", "bench", "hf", "convert"),
    ("train",),
    ("eval", "generate", "tasks", "report"),
    ("runtime",),
    ("longrange",),
    ("model",),
    ("attention",),
    ("memory", "config", "data"),
)

# Third-party packages a function may import where it uses them: optional extras (transformers, datasets,
# tokenizers, tensorboard, wandb, the benchmark peers), and two that are installed with longrange but loaded only
# where used: faiss (only its backends need it; `bench knn` leaves them out without it) and matplotlib (only to
# draw; its Agg backend is chosen before pyplot loads).
OPTIONAL = (
    "transformers",
    "datasets",
    "tokenizers",
    "torch.utils.tensorboard",
    "wandb",
    "faiss",
    "matplotlib",
    "x_transformers",
    "reformer_pytorch",
    "compressive_transformer_pytorch",
    "memorizing_transformers_pytorch",
)

# (importing module, imported module) -> why the import is inside a function
DEFERRED: dict[tuple[str, str], str] = {
    ("longrange.commands.export", "longrange.hf"): "longrange.hf needs the optional transformers package",
}


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module
    target: str  # the imported module (or, for a name that is not a module, the module it comes from)
    path: Path
    line: int
    text: str  # the import statement as written
    in_function: bool

    def where(self) -> str:
        shown = self.path.relative_to(SRC.parent) if self.path.is_relative_to(SRC.parent) else self.path
        return f"{shown}:{self.line}: {self.text}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((SRC / ROOT).rglob("*.py"))}


def layer_of(module: str) -> str:
    """The entry of LAYERS a module of longrange belongs to: its top-level package or module, or "longrange"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_nodes(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement with whether it runs inside a function; `if TYPE_CHECKING:` bodies left out."""
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for other in child.orelse:
                    visit_one(other, in_function)
                continue
            visit_one(child, in_function)

    def visit_one(node: ast.AST, in_function: bool) -> None:
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append((node, in_function))
        visit(node, in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda))

    visit(tree, False)
    return found


def imports_of(module: str, path: Path, known: set[str]) -> list[Import]:
    """What `module` (source at `path`) imports; relative imports resolved, ``from pkg import submodule`` read as
    the submodule when `known` has it."""
    source = path.read_text()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node, in_function in _import_nodes(ast.parse(source, filename=str(path))):
        text = " ".join(ast.get_source_segment(source, node).split())
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in dict.fromkeys(targets):
            found.append(Import(module, target, path, node.lineno, text, in_function))
    return found


def _order() -> dict[str, int]:
    return {name: depth for depth, layer in enumerate(LAYERS) for name in layer}


def layer_violations(imports: list[Import]) -> list[str]:
    """Imports of longrange that point to the importer's own layer (another package) or a layer above it."""
    order = _order()
    found = []
    for imp in imports:
        if imp.target.split(".")[0] != ROOT:
            continue
        source, target = layer_of(imp.importer), layer_of(imp.target)
        if source == target or order[target] > order[source]:
            continue
        relation = "its own layer" if order[target] == order[source] else "a layer above it"
        found.append(f"{imp.where()}  ({source} imports {target}, {relation})")
    return list(dict.fromkeys(found))  # one line per statement, however many names it imports


def _comment_lines(source: str) -> set[int]:
    return {
        tok.start[0] for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT
    }


def _has_reason(lines: list[str], comments: set[int], line: int) -> bool:
    """A comment on the import's line or on the nearest non-blank line above it (a comment, or `try:  # why`)."""
    if line in comments:
        return True
    above = line - 1
    while above > 0 and not lines[above - 1].strip():
        above -= 1
    return above in comments


def function_import_violations(imports: list[Import]) -> list[str]:
    """Imports inside functions that are neither of an optional package nor in DEFERRED, or that say no reason."""
    found = []
    sources: dict[Path, tuple[list[str], set[int]]] = {}
    for imp in imports:
        if not imp.in_function:
            continue
        optional = any(imp.target == name or imp.target.startswith(name + ".") for name in OPTIONAL)
        if not optional and (imp.importer, imp.target) not in DEFERRED:
            found.append(f"{imp.where()}  (inside a function: move it to the top of the module)")
            continue
        if imp.path not in sources:
            source = imp.path.read_text()
            sources[imp.path] = (source.splitlines(), _comment_lines(source))
        if not _has_reason(*sources[imp.path], imp.line):
            found.append(f"{imp.where()}  (inside a function without a comment saying why)")
    return list(dict.fromkeys(found))


def cycle(imports: list[Import], known: set[str]) -> list[str]:
    """A cycle among the modules of `known` (each module once, then the first again), or [] when there is none; an
    import of the importer's own package (through which it is always imported) is not an edge."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.target in known and not (imp.importer + ".").startswith(imp.target + "."):
            graph.setdefault(imp.importer, set()).add(imp.target)
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return list(reversed(error.args[1]))  # graphlib lists it against the arrows
    return []


def documented_layers(text: str) -> tuple[tuple[str, ...], ...]:
    """The layers drawn in the first code block under "## Layers" of docs/architecture.md: each line that starts
    with names (``cli.py``, ``commands/``, ``longrange/__init__.py``, ...) is a layer; lines that start with a
    space or the arrow ``v`` continue a description."""
    block = text.split("\n## Layers\n", 1)[1].split("```", 2)[1]
    layers = []
    for line in block.splitlines():
        if not line or line[0] in " v":
            continue
        names = re.match(r"(?:[\w/]+?(?:\.py|/)(?:\s+|$))+", line).group().split()
        layers.append(
            tuple(ROOT if n == f"{ROOT}/__init__.py" else n.removesuffix(".py").removesuffix("/") for n in names)
        )
    return tuple(layers)


@pytest.fixture(scope="module")
def every_import() -> list[Import]:
    modules = all_modules()
    return [imp for name, path in modules.items() for imp in imports_of(name, path, set(modules))]


def test_every_package_has_one_place_in_the_layers():
    placed = [name for layer in LAYERS for name in layer]
    assert len(placed) == len(set(placed))
    assert {layer_of(m) for m in all_modules()} == set(placed)


def test_the_architecture_document_draws_the_same_layers():
    assert documented_layers((SRC.parent / "docs" / "architecture.md").read_text()) == LAYERS


def test_imports_point_down_the_layers(every_import):
    found = layer_violations(every_import)
    assert not found, "imports against the layers of docs/architecture.md:\n" + "\n".join(found)


def test_imports_inside_functions_are_of_optional_packages_or_listed_with_a_reason(every_import):
    found = function_import_violations(every_import)
    assert not found, "\n" + "\n".join(found)


def test_every_deferred_import_is_still_there(every_import):
    seen = {(imp.importer, imp.target) for imp in every_import if imp.in_function}
    assert set(DEFERRED) - seen == set(), "listed in DEFERRED but no longer imported inside a function"


def test_no_module_imports_itself_back(every_import):
    found = cycle(every_import, set(all_modules()))
    assert not found, "an import cycle: " + " -> ".join(found)


# ----------------------------------------------------------------------------- the checks themselves


def _fake(tmp_path: Path, module: str, source: str) -> list[Import]:
    path = tmp_path / (module.rpartition(".")[2] + ".py")
    path.write_text(source)
    return imports_of(module, path, set(all_modules()))


def test_an_upward_import_is_named_with_its_module_line_and_statement(tmp_path):
    source = '"""A model module that reaches up."""\n\nimport torch\n\nfrom longrange.train.trainer import Trainer\n'
    (message,) = layer_violations(_fake(tmp_path, "longrange.model.fake", source))
    assert message.startswith(f"{tmp_path / 'fake.py'}:5: from longrange.train.trainer import Trainer")
    assert "(model imports train, a layer above it)" in message


def test_a_sideways_import_a_relative_import_and_one_inside_a_function_are_caught(tmp_path):
    source = "from ..generate import generate\n\n\ndef f():\n    from ..model import build  # why\n"
    (message,) = layer_violations(_fake(tmp_path, "longrange.eval.fake", source))  # model is below eval
    assert "fake.py:1: from ..generate import generate  (eval imports generate, its own layer)" in message
    messages = layer_violations(_fake(tmp_path, "longrange.attention.fake", source))
    assert "fake.py:1: from ..generate import generate  (attention imports generate, a layer above it)" in messages[0]
    assert "fake.py:5: from ..model import build  (attention imports model, a layer above it)" in messages[1]


def test_a_type_checking_import_is_left_out(tmp_path):
    source = (
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from longrange.attention.xl import XLConfig\n"
        "else:\n    from longrange.model import build\n"
    )
    imports = _fake(tmp_path, "longrange.config", source)
    assert [imp.target for imp in imports] == ["typing", "longrange.model.build"]
    assert [m.split("  ")[1] for m in layer_violations(imports)] == ["(config imports model, a layer above it)"]


def test_a_function_level_import_needs_an_optional_package_or_a_listed_reason_and_a_comment(tmp_path):
    source = (
        "def f():\n    import torch\n\n\n"
        "def g():\n    try:  # optional\n        import wandb\n    except ImportError:\n        pass\n\n\n"
        "def h():\n    import matplotlib\n\n\n"
        "def k():\n    from longrange.hf import export_hf\n"
    )
    messages = function_import_violations(_fake(tmp_path, "longrange.commands.export", source))
    assert [m.split("  ")[0].rsplit(": ", 1)[1] for m in messages] == [
        "import torch",
        "import matplotlib",
        "from longrange.hf import export_hf",
    ]
    assert "move it to the top" in messages[0]
    assert "without a comment" in messages[1] and "without a comment" in messages[2]


def test_a_cycle_between_two_modules_is_found(tmp_path):
    known = {"longrange.data.a", "longrange.data.b", "longrange.data"}
    a = imports_of(
        "longrange.data.a", _write(tmp_path, "a.py", "import longrange.data.b\nimport longrange.data\n"), known
    )
    b = imports_of("longrange.data.b", _write(tmp_path, "b.py", "def f():\n    from longrange.data import a\n"), known)
    assert cycle(a + b, known) in (
        ["longrange.data.a", "longrange.data.b", "longrange.data.a"],
        ["longrange.data.b", "longrange.data.a", "longrange.data.b"],
    )
    assert cycle(a, known) == []  # a module's import of its own package is not a cycle


def _write(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder / name
