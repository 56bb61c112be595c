"""The benchmark harness runs points in fresh processes and writes every result file."""

import json

from longrange.bench.report import loglog_slope
from longrange.cli import main


def test_attention_bench_writes_results_with_ratios(tmp_path):
    out = tmp_path / "bench"
    args = [
        "bench",
        "attention",
        "--variants",
        "xl",
        "--lengths",
        "64,128",
        "--d-model",
        "32",
        "--heads",
        "2",
        "--repeats",
        "1",
        "--threads",
        "1",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    data = json.loads((out / "results.json").read_text())
    assert {r["variant"] for r in data["rows"]} == {"full", "xl"}  # full is always the baseline
    assert all(r["status"] == "ok" and r["time_s"] > 0 for r in data["rows"])
    assert all(r["time_ratio"] == 1.0 for r in data["rows"] if r["variant"] == "full")
    for name in ("results.csv", "results.md", "results.png"):
        assert (out / name).stat().st_size > 0


def test_loglog_slope_of_quadratic_is_two():
    rows = [{"variant": "q", "length": n, "time_s": n * n * 1e-6, "status": "ok"} for n in (256, 512, 1024)]
    assert abs(loglog_slope(rows, "q") - 2.0) < 1e-9


def test_a_point_past_its_timeout_is_recorded_not_raised():
    from longrange.bench.attention import measure_in_subprocess

    point = {"variant": "full", "length": 64, "d_model": 32, "heads": 2, "batch": 1, "causal": True}
    row = measure_in_subprocess({**point, "repeats": 1, "device": "cpu"}, threads=1, timeout=0.01)
    assert row["status"].startswith("timeout") and "time_s" not in row


def test_a_point_that_fails_is_recorded_with_its_reason():
    from longrange.bench.attention import measure_in_subprocess

    point = {"variant": "full", "length": 64, "d_model": 30, "heads": 4, "batch": 1, "causal": True}
    row = measure_in_subprocess({**point, "repeats": 1, "device": "cpu"}, threads=1, timeout=60)
    assert row["status"].startswith("failed")


def test_knn_bench_writes_its_table(tmp_path):
    out = tmp_path / "knn"
    args = ["bench", "knn", "--sizes", "256", "--backends", "exact", "--distributions", "random", "--queries", "8"]
    options = ["--k", "4", "--dim", "8", "--steps", "0", "--threads", "1", "--precision", "fp32"]
    assert main([*args, *options, "--out", str(out)]) == 0
    data = json.loads((out / "knn.json").read_text())
    assert [(r["backend"], r["size"], r["recall"]) for r in data["search"]] == [("exact", 256, 1.0)]
    table = (out / "knn.md").read_text()
    assert "| random | 256 | exact fp32 |" in table and "k = 4, d = 8" in table


def test_knn_bench_in_bf16_times_a_bf16_store_against_the_float32_one(tmp_path):
    out = tmp_path / "knn"
    args = ["bench", "knn", "--sizes", "4096", "--backends", "exact", "--distributions", "clustered", "--queries", "8"]
    options = ["--k", "4", "--dim", "8", "--threads", "1", "--precision", "bf16", "--out", str(out)]
    steps = ["--steps", "1", "--step-preset", "memorizing-tiny", "--step-sizes", "64"]
    assert main([*args, *options, *steps]) == 0
    data = json.loads((out / "knn.json").read_text())
    assert [(r["backend"], r["precision"]) for r in data["search"]] == [("exact", "fp32"), ("exact", "bf16")]
    assert data["search"][1]["recall"] >= 0.99  # its agreement with the float32 search
    assert [(r["memory_size"], r["precision"]) for r in data["step"]] == [(0, "bf16"), (64, "bf16")]
    assert "| clustered | 4,096 | exact bf16 |" in (out / "knn.md").read_text()


def test_reversible_bench_reports_the_growth_of_both_stacks(tmp_path, monkeypatch):
    from longrange.bench import attention

    # each point's peak, as a fresh process would measure it: the plain stack grows 30 MiB per layer, the other 1
    def measured(point, threads, timeout):
        kind, depth = point["variant"].split("-depth")
        return {**point, "peak_mib": 100 + int(depth) * (1 if kind == "reversible" else 30), "status": "ok"}

    monkeypatch.setattr(attention, "measure_in_subprocess", measured)
    out = tmp_path / "reversible"
    args = ["bench", "reversible", "--length", "64", "--d-model", "32", "--heads", "2", "--threads", "1"]
    assert main([*args, "--out", str(out)]) == 0
    data = json.loads((out / "reversible.json").read_text())
    assert [r["variant"] for r in data["rows"]] == [f"{k}-depth{d}" for k in ("reversible", "plain") for d in (2, 4, 8)]
    assert data["growth"] == {"reversible": 6, "plain": 180, "ratio": 6 / 180}
