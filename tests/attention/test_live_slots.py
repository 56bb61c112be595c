"""Memory slots never written are left out of the attention (`LayerState.live`), with the same results.

A fresh state says none of its memory slots is live, so the first segments score only the slots written so far;
the same state with the count unknown (``live`` empty) scores every slot and masks the unwritten ones. Both must
give the same outputs and gradients, and a state restored from a checkpoint must not be taken for a fresh one.
"""

import pytest
import torch

import longrange
from longrange.attention.positions import T5RelativeBias
from longrange.memory.state import ModelState

SEGMENT = 8
CONFIGS = {
    "xl": dict(layers=["full", "xl"], xl={"mem_len": 12}),
    "xl-t5": dict(layers=["xl", "xl"], xl={"mem_len": 12, "positions": "t5"}),
    "knn": dict(layers=["xl", "knn"], xl={"mem_len": 8}, knn={"mem_len": 12, "memory_size": 20, "topk": 3}),
    # memory 12 > segment 8: the second segment evicts a mix of written and never-written slots
    "compressive": dict(
        layers=["full", "compressive"],
        compressive={"mem_len": 12, "cmem_len": 6, "rate": 3, "compression": "conv", "loss": "attention"},
    ),
    "compressive-most-used": dict(
        layers=["compressive", "compressive"],
        compressive={"mem_len": 8, "cmem_len": 4, "rate": 2, "compression": "most_used"},
    ),
    "compressive-autoencoding": dict(
        layers=["compressive"],
        compressive={"mem_len": 12, "cmem_len": 6, "rate": 3, "compression": "conv", "loss": "autoencoding"},
    ),
}


def _model(name: str):
    torch.manual_seed(0)
    cfg = longrange.ModelConfig(vocab_size=32, d_model=16, n_heads=2, segment_len=SEGMENT, **CONFIGS[name])
    model = longrange.build_model(cfg).train()
    with torch.no_grad():  # zero-initialised biases would hide position terms
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def _forget_live(state: ModelState) -> ModelState:
    for layer in state.layers:
        if layer is not None:
            layer.live = {}
    return state


def _run(model, tokens, state, segments=4):
    """Logits and parameter gradients of `segments` segments from `state`."""
    logits, grads = [], []
    for s in range(segments):
        x = tokens[:, s * SEGMENT : (s + 1) * SEGMENT]
        out = model(x, state=state, targets=tokens[:, s * SEGMENT + 1 : (s + 1) * SEGMENT + 1])
        model.zero_grad()
        (out.loss if out.aux_loss is None else out.loss + out.aux_loss).backward()
        logits.append(out.logits.detach())
        grads.append([torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()])
        state = out.state.detach()
    return logits, grads, state


@pytest.mark.parametrize("name", list(CONFIGS))
def test_leaving_out_unwritten_slots_gives_the_same_outputs_and_gradients(name):
    model = _model(name)
    tokens = torch.randint(0, 32, (2, 4 * SEGMENT + 1))
    fresh = model.init_state(2)
    assert any(layer is not None and layer.live for layer in fresh.layers)  # the fast path is taken
    fast = _run(model, tokens, fresh)
    full = _run(model, tokens, _forget_live(model.init_state(2)))
    for a, b in zip(fast[0], full[0], strict=True):
        torch.testing.assert_close(a, b)
    for step_a, step_b in zip(fast[1], full[1], strict=True):
        for a, b in zip(step_a, step_b, strict=True):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_a_state_loaded_from_a_checkpoint_is_not_taken_for_a_fresh_one(name):
    model = _model(name).eval()
    tokens = torch.randint(0, 32, (2, 3 * SEGMENT))
    state = model.init_state(2)
    for s in range(2):
        state = model(tokens[:, s * SEGMENT : (s + 1) * SEGMENT], state=state).state
    saved = state.state_dict()
    loaded = model.init_state(2)
    loaded.load_state_dict(saved)
    for entry in saved["layers"]:
        if entry is not None:
            entry.pop("live")  # a checkpoint written before the counts existed
    old_format = model.init_state(2)
    old_format.load_state_dict(saved)
    x = tokens[:, 2 * SEGMENT :]
    expected = model(x, state=state).logits  # (each state has its own kNN store: no entry is added twice)
    torch.testing.assert_close(model(x, state=loaded).logits, expected)
    torch.testing.assert_close(model(x, state=old_format).logits, expected)


def test_an_empty_knn_store_is_skipped_but_its_gate_still_gets_a_zero_gradient():
    model = _model("knn")
    tokens = torch.randint(0, 32, (2, SEGMENT + 1))
    out = model(tokens[:, :SEGMENT], targets=tokens[:, 1:])
    out.loss.backward()
    gate = model.blocks[1].attention.gate_bias
    assert gate.grad is not None and (gate.grad == 0).all()


def test_t5_shifted_bias_equals_the_bucket_lookup_on_every_allowed_key():
    bias = T5RelativeBias(n_heads=3, n_buckets=8, max_distance=20)
    torch.nn.init.normal_(bias.bias.weight)
    for n_prev, t in ((0, 5), (3, 5), (40, 7)):
        i, j = torch.arange(t)[:, None], torch.arange(n_prev + t)
        allowed = j <= n_prev + i
        looked_up = bias((n_prev + i) - j)  # (H, T, L)
        torch.testing.assert_close(
            bias.shifted(n_prev, t, torch.get_default_device())[:, allowed], looked_up[:, allowed]
        )
        # the gradient reaches the same buckets
        weight = torch.randn(3, t, n_prev + t) * allowed
        shifted = bias.shifted(n_prev, t, torch.get_default_device())
        (g_shift,) = torch.autograd.grad((shifted * weight).sum(), [bias.bias.weight])
        (g_look,) = torch.autograd.grad((bias((n_prev + i) - j) * weight).sum(), [bias.bias.weight])
        torch.testing.assert_close(g_shift, g_look)


def test_the_shift_equals_slicing_and_its_backward_is_the_slices():
    """`shift_rows`' own backward (the gradient padded with T leading zeros) equals slicing's, in double precision."""
    from longrange.attention.positions import shift_rows

    t, n_keys = 5, 12
    rows = torch.randn(2, 3, t, n_keys + 1, dtype=torch.double, requires_grad=True)
    sliced = rows.view(2, 3, n_keys + 1, t)[:, :, 1:].reshape(2, 3, t, n_keys)
    torch.testing.assert_close(shift_rows(rows), sliced, rtol=0, atol=0)
    assert torch.autograd.gradcheck(shift_rows, (rows,))
    weight = torch.randn(2, 3, t, n_keys, dtype=torch.double)
    (mine,) = torch.autograd.grad((shift_rows(rows) * weight).sum(), rows)
    (theirs,) = torch.autograd.grad((sliced * weight).sum(), rows)
    torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
