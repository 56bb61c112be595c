"""`bench peers` at a tiny layout: our side alone always, and against the peers when the extra is installed."""

import json

import pytest

from longrange.bench.peers import SYSTEMS, Layout, our_config, peer_available, run_point
from longrange.cli import main

TINY = {"vocab": 64, "d_model": 32, "depth": 6, "heads": 2, "segment": 16, "knn_memory": 64, "topk": 4, "bucket": 8}
TINY_ARGS = ["--vocab", "64", "--d-model", "32", "--heads", "2", "--segment", "16", "--knn-memory", "64"]
TINY_ARGS += ["--bucket", "8", "--steps", "1", "--warmup", "0", "--threads", "1"]


def test_our_configs_express_the_peer_comparison_layouts():
    layout = Layout()
    comp = our_config("compressive", layout, 1024)
    assert comp.layers == ["full"] * 3 + ["compressive"] * 3 and comp.segment_len == 512
    assert (comp.compressive.mem_len, comp.compressive.cmem_len, comp.compressive.rate) == (512, 128, 4)
    mem = our_config("memorizing", layout, 4096)
    assert mem.layers == ["full", "full", "xl", "xl", "knn", "knn"]
    assert (mem.knn.memory_size, mem.knn.topk, mem.knn.mem_len, mem.xl.mem_len) == (64000, 32, 512, 512)
    assert mem.xl.positions == "t5"  # the peer's T5 bias in its XL layers
    ref = our_config("reformer", layout, 4096)
    assert ref.layers == ["lsh"] * 6 and ref.reversible and ref.lsh.n_hashes == 4 and ref.segment_len == 4096


@pytest.mark.parametrize("system", SYSTEMS)
def test_our_side_runs_a_training_step(system):
    point = {"system": system, "side": "ours", "length": 32, "carry": True, "steps": 1, "warmup": 1, "threads": 1}
    row = run_point({**point, "layout": TINY})
    assert row["status"] == "ok" and row["tokens_per_s"] > 0


def test_bench_peers_ours_only_writes_the_table(tmp_path):
    """The whole command (a fresh process for its one point, and the matmul ceiling): a few seconds."""
    out = tmp_path / "peers"
    args = ["bench", "peers", "--systems", "transformer", "--lengths", "32", "--ours-only", *TINY_ARGS]
    assert main([*args, "--out", str(out)]) == 0
    data = json.loads((out / "peers.json").read_text())
    (row,) = data["rows"]
    assert row["ours_tokens_per_s"] > 0 and row["peer_tokens_per_s"] is None and 0 < row["ours_mfu"]
    assert {"commit", "torch", "threads"} <= set(data["meta"])
    assert "| transformer | 32 |" in (out / "peers.md").read_text()


def test_an_unknown_system_is_one_clear_error(capsys):
    assert main(["bench", "peers", "--systems", "xl", "--ours-only"]) != 0
    assert "unknown system 'xl'" in capsys.readouterr().err


@pytest.mark.parametrize("system", SYSTEMS)
def test_the_peer_trains_at_a_tiny_layout(system):
    if not peer_available(system):
        pytest.skip("the bench-peers extra is not installed")
    point = {"system": system, "side": "peer", "length": 32, "steps": 1, "warmup": 0, "threads": 1}
    row = run_point({**point, "layout": TINY})
    assert row["status"] == "ok" and row["tokens_per_s"] > 0


def test_the_full_memory_point_searches_a_full_store(monkeypatch):
    """`full_memory`: every kNN store holds its M entries before the first timed step (the steady state of a long
    run), and keeps them (carried)."""
    from longrange.memory.knn_store import KNNMemory

    sizes = []
    original = KNNMemory.search

    def search(self, queries, k):
        sizes.append(int(self.count.min()))
        return original(self, queries, k)

    monkeypatch.setattr(KNNMemory, "search", search)
    point = {"system": "memorizing", "side": "ours", "length": 32, "steps": 1, "warmup": 0, "threads": 1}
    assert run_point({**point, "full_memory": True, "layout": TINY})["status"] == "ok"
    assert sizes and min(sizes) == TINY["knn_memory"]
