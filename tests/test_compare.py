"""`longrange compare` end to end at a tiny budget, resume after an interruption, skipped systems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from longrange.compare import CompareConfig, compare
from longrange.report.html import write_html


@pytest.fixture
def corpus(tmp_path: Path) -> str:
    """Twenty small generated documents with a long-range repeat (so memory can help)."""
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(20):
        head = f"doc {i}: key={i * 7919 % 1000:03d}\n".encode()
        (root / f"d{i:02d}.txt").write_bytes(head + b"filler line\n" * 12 + head)
    return str(root)


def _cc(corpus: str, systems: list[str]) -> CompareConfig:
    return CompareConfig(systems=systems, size="tiny", steps=3, data=corpus, eval_docs=2, eval_bytes=256, command="t")


def test_compare_writes_every_table_and_plot_and_resumes(tmp_path, corpus):
    out = tmp_path / "cmp"
    compare(_cc(corpus, ["transformer", "transformer-xl"]), out, isolate=False)
    for name in (
        "report.md",
        "report.html",
        "summary.md",
        "results.json",
        "training_curves.png",
        "loss_by_position.png",
    ):
        assert (out / name).stat().st_size > 0, name
    report = (out / "report.md").read_text()
    for section in ("## Results", "## Training curves", "## Loss by position", "## Memory ablations", "## Reproduce"):
        assert section in report
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"transformer", "transformer-xl"}
    for r in results.values():
        assert r["parameters"] > 0 and 0 < r["bpb"] < 9 and r["tokens_per_s"] > 0 and r["peak_memory_mb"] > 0
        assert r["batch_size"] * r["segment_len"] == json.loads((out / "compare.json").read_text())["tokens_per_step"]
    assert [a["variant"] for a in results["transformer-xl"]["ablations"]] == ["off", "half", "trained", "double"]
    assert results["transformer"]["ablations"] == []  # no memory, no ablation
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html and 'src="training' not in html

    # interrupt: transformer-xl lost its done marker (killed during evaluation); only it runs again
    kept = (out / "runs/transformer/result.json").stat().st_mtime_ns
    redo = (out / "runs/transformer-xl/result.json").stat().st_mtime_ns
    (out / "runs/transformer-xl/done").unlink()
    compare(_cc(corpus, ["transformer", "transformer-xl"]), out, isolate=False)
    assert (out / "runs/transformer/result.json").stat().st_mtime_ns == kept
    assert (out / "runs/transformer-xl/result.json").stat().st_mtime_ns > redo
    assert (out / "runs/transformer-xl/done").exists()
    steps = [json.loads(x)["step"] for x in (out / "runs/transformer-xl/metrics.jsonl").read_text().splitlines()]
    assert max(steps) == 3  # resumed from its checkpoint, not trained past the budget


def test_unregistered_system_is_skipped_with_a_note(tmp_path, corpus, monkeypatch):
    from longrange import attention

    monkeypatch.delitem(attention.REGISTRY, "xl")
    out = compare(_cc(corpus, ["transformer", "transformer-xl"]), tmp_path / "cmp", isolate=False)
    report = (out / "report.md").read_text()
    assert "### Skipped" in report and "`transformer-xl`: attention kind(s) ['xl'] not registered" in report
    assert list(json.loads((out / "results.json").read_text())) == ["transformer"]


def test_html_inlines_images(tmp_path):
    (tmp_path / "p.png").write_bytes(b"\x89PNG fake")
    (tmp_path / "report.md").write_text("# T\n\n| a | b |\n|---|---|\n| 1 | `x` |\n\n![p](p.png)\n")
    html = write_html(tmp_path).read_text()
    assert "<h1>T</h1>" in html and "<td><code>x</code></td>" in html and "base64,iVBORyBmYWtl" in html


def test_prepared_corpus_is_used_with_its_own_split(tmp_path):
    from longrange.compare import _eval_documents, _train_spec

    root = tmp_path / "books"
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        (root / split / "0000.txt").write_bytes(f"{split} book".encode())
    manifest = {"splits": {"test": {"documents": [{"file": "test/0000.txt", "source": "x", "bytes": 9}]}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    cc = CompareConfig(data=str(root), eval_bytes=0)
    assert _train_spec(str(root)) == str(root / "train") and _train_spec("stdlib") == "stdlib"
    assert _eval_documents(cc) == [b"test book"]
