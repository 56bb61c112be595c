"""kNN attention: k = M equals attention over the whole memory; no self/future retrieval; gradients; loading."""

import pytest
import torch
import torch.nn.functional as F

import longrange
from longrange.attention.knn import KNNAttention
from longrange.generate import generate
from longrange.model.io import load_weights, save

D, H, T = 16, 2, 8


def _attn(memory_size=32, topk=4, mem_len=0, backend="exact"):
    return KNNAttention(D, H, 0.0, True, 0, memory_size=memory_size, topk=topk, backend=backend, mem_len=mem_len).eval()


def test_k_equal_to_memory_size_is_attention_over_the_whole_memory():
    attn = _attn(memory_size=2 * T, topk=2 * T)
    with torch.no_grad():
        attn.gate_bias.fill_(2.0)
    first, second = torch.randn(2, 1, T, D)
    state = attn(first, state=attn.init_state(1, torch.get_default_device(), torch.float32), doc_start=None).state
    store = state.store
    out = attn(second, state=state, doc_start=None).out

    # reference: gate * softmax over every stored key + (1 - gate) * local attention
    q = F.normalize(attn.q(second).view(1, T, H, D // H).transpose(1, 2), dim=-1)
    k, v = attn.kv(second).chunk(2, -1)
    k = F.normalize(k.view(1, T, H, D // H).transpose(1, 2), dim=-1)
    v = v.view(1, T, H, D // H).transpose(1, 2)
    scale = attn.log_scale.exp()[None, :, None, None]
    mem_k, mem_v = store.keys[:, :, :T], store.values[:, :, :T]  # the first segment's entries
    memory = ((q @ mem_k.transpose(-1, -2)) * scale).softmax(-1) @ mem_v
    distance = torch.arange(T)[:, None] - torch.arange(T)
    bias = attn.rel_bias(distance)[None].masked_fill(distance < 0, float("-inf"))
    local = ((q @ k.transpose(-1, -2)) * scale + bias).softmax(-1) @ v
    g = torch.sigmoid(attn.gate_bias)[None, :, None, None]
    expected = attn.out((g * memory + (1 - g) * local).transpose(1, 2).reshape(1, T, D))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_first_segment_retrieves_nothing_so_no_token_sees_itself_or_its_future():
    attn = _attn()
    x = torch.randn(2, T, D)
    with_memory = attn(x, state=attn.init_state(2, torch.get_default_device(), torch.float32), doc_start=None)
    without = _attn(memory_size=0)
    without.load_state_dict(attn.state_dict())
    torch.testing.assert_close(with_memory.out, without(x, state=None, doc_start=None).out)
    assert with_memory.state.store.count.tolist() == [T, T]  # added only after the segment


def test_rows_never_retrieve_from_other_documents():
    attn = _attn()
    x = torch.randn(2, T, D)
    state = attn(x, state=attn.init_state(2, torch.get_default_device(), torch.float32), doc_start=None).state
    state = state.reset(torch.tensor([True, False]))
    y = torch.randn(2, T, D)
    out = attn(y, state=state, doc_start=None).out
    fresh = attn(y[:1], state=attn.init_state(1, torch.get_default_device(), torch.float32), doc_start=None).out
    torch.testing.assert_close(out[:1], fresh)


def test_gradients_reach_queries_and_gate_but_never_the_memory():
    attn = _attn().train()
    state = attn(
        torch.randn(1, T, D), state=attn.init_state(1, torch.get_default_device(), torch.float32), doc_start=None
    ).state
    stored = state.store.keys.clone()
    out = attn(torch.randn(1, T, D), state=state, doc_start=None).out
    out.sum().backward()
    assert attn.gate_bias.grad.abs().sum() > 0 and attn.q.weight.grad.abs().sum() > 0
    assert not state.store.keys.requires_grad
    assert torch.equal(state.store.keys[:, :, :T], stored[:, :, :T])


def test_faiss_flat_backend_gives_the_same_outputs():
    exact, flat = _attn(backend="exact"), _attn(backend="faiss-flat")
    flat.load_state_dict(exact.state_dict())
    xs = torch.randn(3, 2, T, D)
    outs = []
    for attn in (exact, flat):
        state = attn.init_state(2, torch.get_default_device(), torch.float32)
        for x in xs:
            result = attn(x, state=state, doc_start=None)
            state = result.state
        outs.append(result.out)
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_generation_equals_recomputation_with_the_same_segmentation():
    model = longrange.build_model(longrange.ModelConfig.from_name("memorizing-tiny", segment_len=16)).eval()
    prompt = torch.randint(0, 256, (40,)).tolist()
    tokens = generate(model, prompt, 6, temperature=0)
    state, expected = model.init_state(1), []
    with torch.no_grad():
        for start in range(0, 40, 16):
            out = model(torch.tensor([prompt[start : start + 16]]), state=state)
            state = out.state
        for token in tokens:
            expected.append(int(out.logits[0, -1].argmax()))
            out = model(torch.tensor([[token]]), state=state)
            state = out.state
    assert tokens == expected


def test_transformer_xl_checkpoint_loads_into_a_memorizing_model(tmp_path):
    xl = longrange.build_model(longrange.ModelConfig.from_name("transformer-xl-tiny"))
    save(xl, tmp_path / "xl")
    memorizing = longrange.build_model(longrange.ModelConfig.from_name("memorizing-tiny"))
    missing = load_weights(memorizing, tmp_path / "xl", strict=False)
    assert missing and all("rel_bias" in k or "gate_bias" in k or "log_scale" in k or "blocks.1" in k for k in missing)
    torch.testing.assert_close(memorizing.blocks[1].attention.q.weight, xl.blocks[1].attention.q.weight)


@pytest.mark.cpu_only  # the files are mapped into CPU memory; a CUDA model refuses disk storage
def test_disk_storage_option_gives_the_same_model_outputs(tmp_path):
    ram = longrange.build_model(longrange.ModelConfig.from_name("memorizing-tiny", segment_len=16)).eval()
    cfg = longrange.ModelConfig.from_name("memorizing-tiny", segment_len=16, **{"knn.storage": "disk"})
    disk = longrange.build_model(cfg.replace(**{"knn.storage_dir": str(tmp_path)})).eval()
    disk.load_state_dict(ram.state_dict())
    tokens = torch.randint(0, 256, (2, 48))
    states = [ram.init_state(2), disk.init_state(2)]
    assert any(tmp_path.iterdir())  # the kNN layer's keys and values live in files there
    with torch.no_grad():
        for start in range(0, 48, 16):
            outs = [m(tokens[:, start : start + 16], state=s) for m, s in zip((ram, disk), states, strict=True)]
            states = [o.state for o in outs]
            torch.testing.assert_close(outs[0].logits, outs[1].logits, rtol=0, atol=0)


def test_a_float64_model_runs_once_the_memory_has_entries_and_matches_float32():
    attn = _attn(mem_len=T)
    wide = _attn(mem_len=T).double()
    wide.load_state_dict(attn.state_dict())
    x = torch.randn(3, 1, T, D)
    state, wide_state = (
        attn.init_state(1, torch.get_default_device(), torch.float32),
        wide.init_state(1, torch.get_default_device(), torch.float64),
    )
    assert wide_state.store.keys.dtype == torch.float64  # the store follows the model's dtype
    for segment in x:  # the second and third segments search a non-empty memory
        out, state = attn(segment, state=state, doc_start=None)[:2]
        wide_out, wide_state = wide(segment.double(), state=wide_state, doc_start=None)[:2]
        assert wide_out.dtype == torch.float64
        torch.testing.assert_close(wide_out.float(), out, rtol=1e-5, atol=1e-5)


def test_padding_with_a_state_is_never_stored_as_memory():
    """Changing only the padded tokens of one segment moves nothing in the next segment (kNN store and XL cache),
    and the positions count real tokens only."""
    attn = _attn(mem_len=T)
    first, second = torch.randn(2, 2, T, D)
    pad = torch.ones(2, T, dtype=torch.bool)
    pad[0, 5:] = False  # row 0: 5 real tokens, then padding
    other = first.clone()
    other[0, 5:] = 100 * torch.randn(T - 5, D)  # a different padding
    outs = []
    for x in (first, other):
        state = attn(
            x, state=attn.init_state(2, torch.get_default_device(), torch.float32), doc_start=None, pad_mask=pad
        ).state
        assert state["pos"].tolist() == [5, T] and state["valid"][0].tolist() == [True] * 5 + [False] * (T - 5)
        assert state.store.count.tolist() == [5, T]
        outs.append(attn(second, state=state, doc_start=None).out)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    # the real tokens alone (no padding at all) give the same next segment
    alone = attn(
        first[:1, :5], state=attn.init_state(1, torch.get_default_device(), torch.float32), doc_start=None
    ).state
    torch.testing.assert_close(attn(second[:1], state=alone, doc_start=None).out, outs[0][:1], rtol=1e-5, atol=1e-5)
