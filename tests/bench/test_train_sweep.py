"""`bench train`'s batch-size sweep (doubling until out of memory, a cap or a time budget), its best point and MFU
against the ceiling of the run's precision, and `--profile`'s table of time by kernel."""

import json

import pytest
import torch

from longrange.bench import train_speed
from longrange.cli import main


def _fake_point(limit: int, calls: list):
    """A stand-in for `train_tokens_per_s`: tokens/s that peak at batch 4, out of memory from `limit` rows on."""

    def point(preset, steps, batch_size, threads, **options):
        calls.append((batch_size, options))
        if batch_size >= limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"preset": preset, "batch_size": batch_size, "tokens_per_s": {1: 10, 2: 30, 4: 50, 8: 40}[batch_size]}

    return point


def test_the_sweep_doubles_until_out_of_memory_and_keeps_the_fastest(monkeypatch):
    calls = []
    monkeypatch.setattr(train_speed, "train_tokens_per_s", _fake_point(16, calls))
    rows = train_speed.sweep_batch_sizes("transformer-tiny", 1, 1, 64, 1, fused_adamw=True)
    assert [r["batch_size"] for r in rows] == [1, 2, 4, 8, 16]
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["out of memory"]
    assert all(options == {"fused_adamw": True} for _, options in calls)
    best = train_speed.best_point(rows)
    assert best["batch_size"] == 4 and best["tokens_per_s"] == 50
    assert best["batch_sizes_tried"] == [1, 2, 4, 8, 16] and best["sweep_stopped"] == "out of memory"


def test_the_sweep_stops_at_the_cap_or_the_time_budget(monkeypatch):
    monkeypatch.setattr(train_speed, "train_tokens_per_s", _fake_point(99, []))
    assert [r["batch_size"] for r in train_speed.sweep_batch_sizes("p", 1, 1, 6, 1)] == [1, 2, 4]
    # a budget that the first point already used up: no second point
    assert len(train_speed.sweep_batch_sizes("p", 1, 1, 8, 1, seconds=1e-9)) == 1
    assert train_speed.best_point([{"preset": "p", "batch_size": 1, "status": "out of memory"}]) is None
    with pytest.raises(ValueError, match="max-batch-size"):
        train_speed.sweep_batch_sizes("p", 1, 4, 2, 1)


def test_an_error_that_is_not_out_of_memory_is_raised(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(train_speed, "train_tokens_per_s", broken)
    with pytest.raises(RuntimeError, match="shapes"):
        train_speed.sweep_batch_sizes("p", 1, 1, 4, 1)


def test_bench_train_sweeps_reports_the_best_and_profiles_it(tmp_path, capsys):
    out, profiles = tmp_path / "train", tmp_path / "profile"
    args = ["bench", "train", "--presets", "transformer-tiny", "--steps", "1", "--batch-size", "1"]
    args += ["--max-batch-size", "2", "--precision", "bf16", "--fused-adamw", "--profile", str(profiles)]
    assert main([*args, "--profile-steps", "1", "--threads", "1", "--out", str(out)]) == 0
    result = json.loads((out / "train.json").read_text())
    assert [p["batch_size"] for p in result["points"]] == [1, 2]
    (best,) = result["rows"]
    assert best["tokens_per_s"] == max(p["tokens_per_s"] for p in result["points"])
    assert best["precision"] == "bf16" and best["ceiling_dtype"] == "bfloat16" and best["fused_adamw"]
    assert 0 < best["mfu"] < 1.5
    table = json.loads((profiles / "transformer-tiny.json").read_text())
    assert table["time"] == "self CPU time" and table["rows"] and table["rows"][0]["self_ms"] > 0
    assert any(row["name"] == "aten::mm" or "addmm" in row["name"] for row in table["rows"])
    assert "Self CPU" in (profiles / "transformer-tiny.txt").read_text()
    assert "at batch" in capsys.readouterr().out


def test_bench_train_refuses_a_cap_below_the_first_batch_size(tmp_path, capsys):
    args = ["bench", "train", "--presets", "transformer-tiny", "--batch-size", "4", "--max-batch-size", "2"]
    assert main([*args, "--out", str(tmp_path)]) != 0
    assert "max-batch-size" in capsys.readouterr().err
