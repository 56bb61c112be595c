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
