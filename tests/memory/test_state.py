"""LayerState / ModelState: reset clears exactly the given rows, detach cuts the graph."""

import torch

import longrange
from longrange.memory.state import LayerState, ModelState


def _layer(batch: int = 3) -> LayerState:
    return LayerState({"mem": torch.randn(batch, 4, 2), "valid": torch.ones(batch, 4, dtype=torch.bool)})


class _Store:
    def __init__(self):
        self.cleared = None

    def reset(self, rows):
        self.cleared = rows.clone()


def test_reset_clears_exactly_the_given_rows():
    state = _layer()
    where = torch.tensor([False, True, False])
    out = state.reset(where)
    assert torch.equal(out["mem"][1], torch.zeros(4, 2))
    assert not out["valid"][1].any()
    assert torch.equal(out["mem"][[0, 2]], state["mem"][[0, 2]])
    assert out["valid"][[0, 2]].all()


def test_reset_reaches_the_external_store_and_leaves_input_untouched():
    state = _layer()
    state.store = _Store()
    before = state["mem"].clone()
    state.reset(torch.tensor([True, False, True]))
    assert torch.equal(state.store.cleared, torch.tensor([True, False, True]))
    assert torch.equal(state["mem"], before)  # out of place


def test_reset_without_rows_is_identity():
    state = _layer()
    kept = state.reset(torch.zeros(3, dtype=torch.bool))  # applied without reading the mask back (no host sync)
    assert all(torch.equal(kept[k], state[k]) for k in state.tensors)
    assert state.reset(None) is state


def test_detach_cuts_the_graph():
    mem = torch.randn(2, 3, requires_grad=True) * 2
    state = LayerState({"mem": mem}).detach()
    assert not state["mem"].requires_grad


def test_model_state_reset_zeroes_position_counter_of_reset_rows():
    state = ModelState([_layer(2), None], torch.tensor([5, 7]))
    out = state.reset(torch.tensor([False, True]))
    assert out.pos.tolist() == [5, 0]
    assert out.layers[1] is None


def test_model_reset_row_equals_fresh_state():
    """A row flagged doc_start computes exactly what a fresh model state computes."""
    torch.manual_seed(0)
    model = longrange.build_model(longrange.ModelConfig.from_name("transformer-xl-tiny")).eval()
    first, second = torch.randint(0, 256, (2, 2, 16))
    state = model(first).state
    carried = model(second, state=state, doc_start=torch.tensor([True, False])).logits
    fresh = model(second).logits
    no_reset = model(second, state=state).logits
    torch.testing.assert_close(carried[0], fresh[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(carried[1], no_reset[1], rtol=0, atol=1e-6)
    assert not torch.allclose(carried[1], fresh[1])


def test_state_dict_is_the_checkpoint_layout_and_loads_into_a_fresh_state():
    """What a checkpoint's ``model_state`` holds (checkpoints written before must load after): per layer None or
    {"tensors", "live"[, "store"]}, and "pos"; the tensors themselves, not copies."""
    cfg = longrange.ModelConfig.from_name(
        "memorizing-tiny", **{"xl.mem_len": 8, "knn.mem_len": 8, "knn.memory_size": 16, "knn.topk": 2}
    )
    model = longrange.build_model(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, 2 * cfg.segment_len))
    with torch.no_grad():
        state = model(tokens[:, : cfg.segment_len], state=model.init_state(2)).state
    saved = state.state_dict()
    assert list(saved) == ["layers", "pos"] and saved["pos"] is state.pos
    for layer, entry in zip(state.layers, saved["layers"], strict=True):
        if layer is None:
            assert entry is None
            continue
        assert list(entry) == ["tensors", "live", *(["store"] if layer.store is not None else [])]
        assert all(entry["tensors"][key] is value for key, value in layer.tensors.items())
        assert entry["live"] == layer.live
    assert any(entry is not None and "store" in entry for entry in saved["layers"])
    loaded = model.init_state(2)
    loaded.load_state_dict(saved)
    assert torch.equal(loaded.pos, state.pos)
    for layer, back in zip(state.layers, loaded.layers, strict=True):
        if layer is not None:
            assert back.live == layer.live and all(torch.equal(back[k], v) for k, v in layer.tensors.items())
    with torch.no_grad():
        x = tokens[:, cfg.segment_len :]
        torch.testing.assert_close(model(x, state=loaded).logits, model(x, state=state).logits)
