"""`longrange compare` end to end at a tiny budget: equal data per update, seeds and their spread, the size
statement, resume after an interruption, skipped systems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

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


def _cc(corpus: str, systems: list[str], **kw) -> CompareConfig:
    kw = {"size": "tiny", "steps": 3, "rows": 4, "data": corpus, "eval_docs": 2, "eval_bytes": 256, **kw}
    return CompareConfig(systems=systems, command="t", **kw)


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
        assert r["rows"] * r["row_tokens"] == json.loads((out / "compare.json").read_text())["tokens_per_step"]
    assert [a["variant"] for a in results["transformer-xl"]["ablations"]] == ["off", "half", "trained", "double"]
    assert results["transformer"]["ablations"] == []  # no memory, no ablation
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html and 'src="training' not in html

    # interrupt: transformer-xl lost its done marker (killed during evaluation); only it runs again
    kept = (out / "runs/transformer/seed-0/result.json").stat().st_mtime_ns
    redo = (out / "runs/transformer-xl/seed-0/result.json").stat().st_mtime_ns
    (out / "runs/transformer-xl/seed-0/done").unlink()
    (out / "runs/transformer-xl/done").unlink()
    compare(_cc(corpus, ["transformer", "transformer-xl"]), out, isolate=False)
    assert (out / "runs/transformer/seed-0/result.json").stat().st_mtime_ns == kept
    assert (out / "runs/transformer-xl/seed-0/result.json").stat().st_mtime_ns > redo
    assert (out / "runs/transformer-xl/done").exists()
    metrics = (out / "runs/transformer-xl/seed-0/metrics.jsonl").read_text().splitlines()
    steps = [json.loads(x)["step"] for x in metrics]
    assert max(steps) == 3  # resumed from its checkpoint, not trained past the budget


def test_every_system_reads_the_same_rows_and_tokens_per_update(tmp_path, corpus):
    """A one-pass system (luna, made to read the whole row) and two segment readers: the report and its JSON
    state one layout (rows x tokens per row per update) for all, each system's segments and reach."""
    out = compare(
        _cc(corpus, ["transformer", "transformer-xl", "luna"], row_tokens=128, ablations=False, eval_docs=1),
        tmp_path / "cmp",
        isolate=False,
    )
    facts = json.loads((out / "report.json").read_text())
    assert (facts["rows"], facts["row_tokens"], facts["tokens_per_update"]) == (4, 128, 512)
    layout = {s: (f["segment_len"], f["accumulate"], f["reach"]) for s, f in facts["systems"].items()}
    # tiny segments are 64: two segments per row per update; XL adds 2 layers x mem_len 64; luna reads the row
    assert layout == {"transformer": (64, 2, 64), "transformer-xl": (64, 2, 192), "luna": (128, 1, 128)}
    for system in layout:  # what the trainer was actually given, from the run folder
        saved = yaml.safe_load((out / "runs" / system / "seed-0" / "train.yaml").read_text())["train"]
        assert saved["batch_size"] * saved["segment_len"] * saved["accumulate"] == 512, system
    report = (out / "report.md").read_text()
    assert "the same 4 rows x 128 tokens per row per update (512 tokens per update, 1,536 per run)" in report
    assert "| transformer-xl | 4 | 128 | 64 | 2 | yes | 192 | segment + 2 x mem_len |" in report
    assert "| luna | 4 | 128 | 128 | 1 | no | 128 | segment (no memory) |" in report
    assert "no difference below is known to exceed the noise" in report  # one seed: no spread claimed


def test_row_tokens_must_be_a_multiple_of_every_segment(corpus):
    from longrange.compare import plan

    with pytest.raises(ValueError, match=r"row_tokens=96 is not a multiple of transformer's segment_len=64"):
        plan(_cc(corpus, ["transformer"], row_tokens=96))
    with pytest.raises(ValueError, match=r"compare seeds=0 must be >= 1"):
        _cc(corpus, ["transformer"], seeds=0)


def test_seeds_give_different_runs_and_a_spread(tmp_path, corpus):
    from longrange.cli import main

    out = tmp_path / "cmp"
    args = ["--systems", "transformer", "--seeds", "2", "--rows", "4", "--row-tokens", "128", "--steps", "3"]
    args += ["--data", corpus, "--eval-docs", "1", "--eval-bytes", "256", "--no-ablations", "--in-process"]
    assert main(["compare", *args, "--out", str(out)]) == 0
    assert json.loads((out / "report.json").read_text())["tokens_per_update"] == 512
    r = json.loads((out / "results.json").read_text())["transformer"]
    first, second = r["seed_bpb"]
    assert r["seeds"] == [0, 1] and first != second  # different initial weights and document order
    assert r["bpb"] == pytest.approx((first + second) / 2)
    assert r["bpb_std"] == pytest.approx(abs(first - second) / 2**0.5) and r["bpb_std"] > 0
    assert (r["bpb_min"], r["bpb_max"]) == (min(first, second), max(first, second))
    summary = (out / "summary.md").read_text()
    assert f"{r['bpb']:.4f} ± {r['bpb_std']:.4f} [{r['bpb_min']:.4f}, {r['bpb_max']:.4f}]" in summary
    assert "2 seeds' min-max ranges" in (out / "report.md").read_text()


def test_separation_and_size_statements():
    from longrange.report.markdown import separations, size_check

    def row(system, bpbs, parameters=1000):
        m = sum(bpbs) / len(bpbs)
        return {"system": system, "bpb": m, "bpb_min": min(bpbs), "bpb_max": max(bpbs), "seed_bpb": bpbs,
                "parameters": parameters}  # fmt: skip

    results = {"a": row("a", [2.0, 2.1]), "b": row("b", [2.05, 2.3]), "c": row("c", [2.5, 2.6], 1200)}
    verdicts = {(p["better"], p["worse"]): p["separated"] for p in separations(results)}
    assert verdicts == {("a", "b"): False, ("a", "c"): True, ("b", "c"): True}  # a, b overlap: within the spread
    single = {"a": row("a", [2.0]), "c": row("c", [2.5])}
    assert [p["separated"] for p in separations(single)] == [False]  # one seed: never called separated
    assert size_check(results, 0.1) == {
        "smallest": "a", "largest": "c", "ratio": pytest.approx(0.2), "tolerance": 0.1, "within": False
    }  # fmt: skip
    assert size_check(results, 0.25)["within"]


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


def test_demo_runs_the_fair_comparison(tmp_path, monkeypatch):
    """`longrange demo` compares every system on the same rows x tokens per update, with seeds (not run here:
    the budget is minutes; the layout it asks for is checked through `plan`)."""
    import argparse

    from longrange.commands import demo
    from longrange.compare import SYSTEMS, plan

    seen = []

    def fake_compare(cc, out, **kw):
        seen.append(cc)
        Path(out).mkdir(parents=True)
        (Path(out) / "summary.md").write_text("table\n")
        return Path(out)

    monkeypatch.setattr(demo, "compare", fake_compare)  # the name the demo calls
    args = argparse.Namespace(
        out=tmp_path / "demo",
        steps=None,
        seeds=2,
        eval_docs=8,
        threads=None,
        preset=None,
        device="cpu",
        precision="fp32",
        compile=False,
    )
    assert demo.run(args) == 0
    (cc,) = seen
    assert (cc.systems, cc.rows, cc.row_tokens, cc.seeds) == (list(SYSTEMS), 4, 1024, 2)
    cfgs, skipped, row_tokens = plan(cc)
    assert not skipped and row_tokens == 1024
    assert {s: c.segment_len for s, c in cfgs.items()} == {
        **{s: 64 for s in SYSTEMS},
        "reformer": 1024,
        "luna": 1024,
    }  # 16 segments of a row per update for the others, memories carried


def test_the_demo_says_when_its_budget_cannot_separate_the_systems(tmp_path):
    from longrange.commands.demo import regime_note

    within = [
        {"better": "memorizing", "worse": "transformer", "difference": 0.01, "separated": False},
        {"better": "transformer", "worse": "luna", "difference": 0.9, "separated": True},
    ]
    stored = tmp_path / "long-context.json"
    stored.write_text(
        json.dumps({"transformer": {"bpb": [1.6, 1.7], "paired": []}, "memorizing": {"bpb": [1.5], "paired": [-0.1]}})
    )
    note = regime_note(within, 2, stored)
    assert "not yet learned" in note and "repro long-context" in note and "memorizing -0.100" in note
    assert "1.650" in note  # the stored Transformer's held-out bpb
    assert "memorizing" not in regime_note(within, 2, tmp_path / "missing.json")  # no stored figure: the pointer
    separated = [{"better": "memorizing", "worse": "transformer", "difference": 0.2, "separated": True}]
    assert regime_note(separated, 2, stored) is None
