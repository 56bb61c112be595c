"""examples/hf_transformers.py runs as documented (a tiny model, a temporary folder, no network)."""

import runpy
from pathlib import Path

import pytest

pytest.importorskip("transformers")

EXAMPLE = Path(__file__).parents[2] / "examples" / "hf_transformers.py"


def test_the_example_runs(capsys):
    runpy.run_path(str(EXAMPLE), run_name="example")["main"]([])
    out = capsys.readouterr().out
    assert "LongRangeForCausalLM: ['xl', 'xl'], segment 64 tokens" in out
    assert "greedy continuation:" in out and "log p(continuation | context) = -" in out
