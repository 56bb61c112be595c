"""`bench attention`: a variant that failed at one length is not run at the longer ones (each would cost its
timeout again), and each point can run under bf16 autocast."""

from longrange.bench import attention


def test_a_variant_that_failed_is_not_run_at_longer_lengths(monkeypatch):
    asked = []

    def point(p, threads, timeout):
        asked.append((p["variant"], p["length"], p["precision"]))
        ok = not (p["variant"] == "xl" and p["length"] >= 64)
        return {**p, "time_s": 1.0, "peak_mib": 1.0, "status": "ok"} if ok else {**p, "status": "timeout>1s"}

    monkeypatch.setattr(attention, "measure_in_subprocess", point)
    options = {"d_model": 16, "heads": 2, "batch": 1, "causal": True, "repeats": 1, "device": "cpu", "threads": 1}
    rows = attention.sweep(["xl"], [128, 32, 64], timeout=1, baseline_max_length=64, precision="bf16", **options)
    assert asked == [("full", 32, "bf16"), ("xl", 32, "bf16"), ("full", 64, "bf16"), ("xl", 64, "bf16")]
    by_point = {(r["variant"], r["length"]): r["status"] for r in rows}
    assert by_point[("xl", 128)] == "not run: failed at length 64" and ("full", 128) not in by_point


def test_a_point_runs_under_bf16_autocast():
    options = {"d_model": 16, "heads": 2, "batch": 1, "causal": True, "repeats": 1, "device": "cpu"}
    for variant in ("full", "lsh-4", "knn"):
        result = attention.measure(variant, 64, precision="bf16", **options)
        assert result["time_s"] > 0
