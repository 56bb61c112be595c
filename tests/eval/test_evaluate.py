"""Evaluation: bits per byte equal a hand computation; carried state equals one pass; buckets add up."""

import math

import pytest
import torch
import torch.nn.functional as F

import longrange
from longrange.eval.evaluate import evaluate

DOCS = [bytes(range(40, 40 + n)) * 1 for n in (23, 37, 50)] + [b"def f(x):\n    return x * 2\n" * 2]


def _model(name: str, **overrides):
    return longrange.build_model(longrange.ModelConfig.from_name(name, **overrides)).eval()


def _one_pass_nats(model, doc: bytes) -> torch.Tensor:
    """Per-target losses of a document read in one forward pass (the definition of the metric)."""
    seq = torch.tensor([list(doc)])
    with torch.no_grad():
        logits = model(seq[:, :-1]).logits[0]
    return F.cross_entropy(logits.float(), seq[0, 1:], reduction="none").double()


def test_bpb_of_a_stateless_model_equals_hand_computation():
    model = _model("transformer-tiny", segment_len=64)
    result = evaluate(model, DOCS, batch_size=2)
    nats = torch.cat([_one_pass_nats(model, d) for d in DOCS])
    assert result["tokens"] == sum(len(d) - 1 for d in DOCS) == nats.numel()
    assert result["bpb"] == pytest.approx(float(nats.mean()) / math.log(2), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]), rel=1e-6)


def test_xl_segment_by_segment_with_carried_state_equals_one_pass_per_document():
    """Memory covering whole documents: segments of 8 with carried (and per-document reset) state ==
    each document in one pass. Two documents per row, so a missing reset or a dropped state shows."""
    model = _model("transformer-xl-tiny", segment_len=8, **{"xl.mem_len": 64})
    result = evaluate(model, DOCS, batch_size=2)
    nats = torch.cat([_one_pass_nats(model, d) for d in DOCS])
    assert result["segments"] > 2 * len(DOCS)
    assert result["bpb"] == pytest.approx(float(nats.mean()) / math.log(2), rel=1e-5)


def test_loss_by_position_buckets_partition_the_targets():
    model = _model("transformer-xl-tiny", segment_len=8, **{"xl.mem_len": 64})
    result = evaluate(model, DOCS, batch_size=3)
    buckets = result["by_position"]
    assert sum(b["tokens"] for b in buckets) == result["tokens"]
    # target offsets run 1 .. len-1; bucket [2^i, 2^(i+1)) holds how many of them each document has
    expected = {}
    for d in DOCS:
        for pos in range(1, len(d)):
            start = 2 ** int(math.log2(pos))
            expected[start] = expected.get(start, 0) + 1
    assert {b["start"]: b["tokens"] for b in buckets} == expected
    mean = sum(b["bpb"] * b["tokens"] for b in buckets) / result["tokens"]
    assert mean == pytest.approx(result["bpb"], rel=1e-6)


def test_max_segments_gives_a_partial_evaluation_and_model_mode_is_restored():
    model = _model("transformer-tiny", segment_len=8).train()
    result = evaluate(model, DOCS, batch_size=2, max_segments=2)
    assert result["segments"] == 2 and result["tokens"] == 2 * 2 * 8
    assert model.training


def test_no_documents_is_an_error():
    with pytest.raises(ValueError, match="no documents"):
        evaluate(_model("transformer-tiny"), [])
