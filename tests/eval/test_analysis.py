"""Evaluation, attention-over-memory analysis and kNN retrieval inspection on tiny models."""

import json

import pytest
import torch

import longrange
from longrange.cli import main
from longrange.commands.inspect_memory import inspect
from longrange.eval import evaluate
from longrange.eval.compressive_attention import attention_by_region


def test_evaluate_counts_every_target_byte_once_and_buckets_by_position():
    model = longrange.build_model(longrange.ModelConfig.from_name("transformer-xl-tiny", segment_len=16))
    docs = [bytes(range(65, 65 + 26)) * 3, b"short document"]
    result = evaluate(model, docs, batch_size=2)
    assert result["tokens"] == sum(len(d) - 1 for d in docs)
    assert sum(b["tokens"] for b in result["by_position"]) == result["tokens"]
    assert result["by_position"][0]["start"] == 1
    assert abs(result["bpb"] - result["loss"] / 0.6931471805599453) < 1e-9


def test_attention_analysis_reports_three_regions_per_layer():
    model = longrange.build_model(longrange.ModelConfig.from_name("compressive-tiny", segment_len=16))
    docs = [bytes(torch.randint(32, 127, (300,)).tolist()) for _ in range(2)]
    result = attention_by_region(model, docs, buckets=4)
    assert len(result["layers"]) == 2 and result["segments"] > 0
    for layer in result["layers"]:
        assert set(layer) == {"compressed", "memory", "segment"} and all(len(v) == 4 for v in layer.values())
        assert layer["compressed"][-1] > 0  # the compressed memory is attended


@pytest.mark.parametrize("command", [["compressive-attention"], ["analyze", "attention"]])  # the former name too
def test_compressive_attention_command_writes_json_and_plot(tmp_path, command):
    run = tmp_path / "run"
    longrange.save(longrange.build_model(longrange.ModelConfig.from_name("compressive-tiny", segment_len=16)), run)
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(4):
        (docs / f"{i}.txt").write_text("some text about memory " * 40)
    assert main([*command, str(run), "--data", str(docs), "--docs", "2"]) == 0
    assert json.loads((run / "attention.json").read_text())["layers"]
    assert (run / "attention.png").stat().st_size > 0


def test_inspect_memory_points_at_earlier_positions_of_the_document():
    model = longrange.build_model(longrange.ModelConfig.from_name("memorizing-tiny", segment_len=16))
    data = bytes(torch.randint(32, 127, (100,)).tolist())
    report = inspect(model, data, at=70, k=4)
    heads = report[0]["heads"]
    assert heads and all(0 < h["gate"] < 1 for h in heads)
    for head in heads:
        assert head["retrievals"] and all(0 <= hit["position"] < 64 for hit in head["retrievals"])  # past segments
