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
