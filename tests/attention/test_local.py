"""Local attention's decode cache: streaming (segments, single tokens, padding, resets) equals one pass."""

import pytest
import torch

from longrange.attention.local import LocalAttention
from tests.attention.streaming import stream

D, H = 32, 2


def _local(chunk_len=8, chunks_before=1, causal=True):
    torch.manual_seed(0)
    return LocalAttention(D, H, 0.0, causal, 0, chunk_len=chunk_len, chunks_before=chunks_before, chunks_after=1).eval()


@pytest.mark.parametrize("chunk_len,chunks_before", [(8, 1), (5, 2), (4, 0)])
@pytest.mark.parametrize("cuts", [[], [3, 11, 12, 29], list(range(1, 45))])
def test_streaming_through_the_cache_equals_one_pass(chunk_len, chunks_before, cuts):
    attn = _local(chunk_len, chunks_before)
    x = torch.randn(2, 45, D)
    whole = attn(x, state=None, doc_start=None).out
    streamed, state = stream(attn, x, cuts)
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)
    assert state["key"].shape[2] == chunk_len * (chunks_before + 1)  # the cache stays bounded
    assert state["pos"].tolist() == [45, 45]


def test_long_segments_through_the_cache_use_query_blocks_and_stay_exact():
    attn = _local(chunk_len=16, chunks_before=1)
    x = torch.randn(1, 700, D)  # more than one query block after a cached prefix
    streamed, _ = stream(attn, x, [50])
    torch.testing.assert_close(streamed, attn(x, state=None, doc_start=None).out, rtol=1e-5, atol=1e-5)


def test_right_padding_in_a_segment_is_skipped():
    attn = _local(chunk_len=4)
    x = torch.randn(2, 20, D)
    whole = attn(x, state=None, doc_start=None).out
    # row 0 gets 3 padding tokens after its first 9 real tokens, row 1 none; padding carries no position
    pad = torch.randn(2, 3, D)
    first = torch.cat([x[:, :9], pad], 1)
    mask = torch.tensor([[True] * 9 + [False] * 3, [True] * 12])
    state = attn.init_state(2, x.device, x.dtype)
    a = attn(first, state=state, doc_start=None, pad_mask=mask)
    b = attn(x[0:1, 9:], state=_row(a.state, 0), doc_start=None)
    torch.testing.assert_close(a.out[0, :9], whole[0, :9], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.out[0], whole[0, 9:], rtol=1e-5, atol=1e-5)
    assert a.state["pos"].tolist() == [9, 12]


def _row(state, i):
    return state.replace(**{k: v[i : i + 1] for k, v in state.tensors.items()})


def test_reset_rows_start_a_new_document():
    attn = _local(chunk_len=4)
    x, y = torch.randn(2, 10, D), torch.randn(2, 6, D)
    state = attn(x, state=attn.init_state(2, x.device, x.dtype), doc_start=None).state
    state = state.reset(torch.tensor([True, False]))
    out = attn(y, state=state, doc_start=None).out
    torch.testing.assert_close(out[0], attn(y[:1], state=None, doc_start=None).out[0], rtol=1e-5, atol=1e-5)
    both = attn(torch.cat([x, y], 1)[1:], state=None, doc_start=None).out[0, 10:]
    torch.testing.assert_close(out[1], both, rtol=1e-5, atol=1e-5)


@pytest.mark.cpu_only  # the training-continuation check reads the mask back: made on the CPU only (local.py)
def test_cache_refuses_bidirectional_and_training_continuation():
    bidirectional = _local(causal=False)
    assert (
        not bidirectional.decode_cache
        and bidirectional.init_state(1, torch.get_default_device(), torch.float32) is None
    )
    attn = _local()
    state = attn(
        torch.randn(1, 5, D), state=attn.init_state(1, torch.get_default_device(), torch.float32), doc_start=None
    ).state
    with pytest.raises(ValueError, match="eval"):
        attn.train()(torch.randn(1, 1, D), state=state, doc_start=None)
