"""The programs know mechanisms only through their registrations: no code outside attention/ tests a kind by name.

Reach, whole-row reading, the memory to ablate, the files kept in a run folder and the FLOPs per token are facts
each mechanism declares when it registers (`longrange.attention.register`); a comparison of a value with a
registered kind's name (``kind == "knn"``, ``"knn" in cfg.layers``) outside attention/ is knowledge that a new
mechanism could not declare.
"""

from __future__ import annotations

import ast
from pathlib import Path

import longrange
from longrange.attention import REGISTRY

SOURCE = Path(longrange.__file__).parent
# about particular systems by design: the Hugging Face Reformer converter reads that checkpoint's layer kinds, a
# reproduction builds one paper's models, the peer benchmark builds ours to match another library's
SYSTEM_SPECIFIC = ("attention/", "convert/", "repro/", "bench/peers.py")


def kind_comparisons(source: str, kinds: set[str]) -> list[str]:
    """Each comparison in `source` of a value with a string (or a tuple, list or set of strings) in `kinds`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            names = [
                n for side in sides for n in (side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side])
            ]
            if any(isinstance(n, ast.Constant) and n.value in kinds for n in names):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def test_no_program_tests_a_mechanism_kind_by_name():
    offenders = {
        name: hits
        for path in sorted(SOURCE.rglob("*.py"))
        if not (name := path.relative_to(SOURCE).as_posix()).startswith(SYSTEM_SPECIFIC)
        if (hits := kind_comparisons(path.read_text(), set(REGISTRY)))
    }
    assert offenders == {}


def test_the_check_finds_a_chain_and_membership_tests():
    source = 'if kind == "xl":\n    pass\nelif "knn" in layers or kind in ("lsh", "luna") or kind == other:\n    pass\n'
    assert len(kind_comparisons(source, set(REGISTRY))) == 3
