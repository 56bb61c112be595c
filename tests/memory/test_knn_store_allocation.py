"""A new kNN memory does not zero its M slots (a step that empties its memory makes one per layer), and no
slot is read before it is written."""

import pytest
import torch

from longrange.attention.knn import KNNAttention
from longrange.memory.knn_store import KNNMemory

B, H, M, E = 2, 2, 4096, 8


def test_a_new_memory_does_not_fill_its_slots(monkeypatch):
    filled = []
    for name in ("zeros", "full", "ones"):
        original = getattr(torch, name)

        def counting(*args, _original=original, **kwargs):
            out = _original(*args, **kwargs)
            filled.append(out.numel())
            return out

        monkeypatch.setattr(torch, name, counting)
    KNNMemory(B, M, H, E)
    assert max(filled) < B * H * M * E  # the (B, M) counters only, not the (B, H, M, E) tables


@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
def test_unwritten_slots_are_never_read(backend):
    torch.manual_seed(0)
    layer = KNNAttention(16, H, 0.0, True, 0, memory_size=64, topk=4, backend=backend, mem_len=4)
    state = layer.init_state(B, torch.get_default_device(), torch.float32)
    store = state.store
    store.keys[:, :, 1:] = float("nan")  # what an uninitialised allocation may hold
    store.values[:, :, 1:] = float("nan")
    x = torch.randn(B, 3, 16, requires_grad=True)
    for _ in range(3):  # empty store, then fewer entries than k, then more
        out = layer(x, state=state)
        assert torch.isfinite(out.out).all()
        state = out.state
    out.out.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_saved_state_holds_zeros_in_unwritten_slots():
    store = KNNMemory(B, M, H, E)
    store.keys.fill_(float("nan"))  # an uninitialised allocation
    store.add(torch.ones(B, H, 3, E), torch.ones(B, H, 3, E))
    saved = store.state_dict()
    assert (saved["keys"][:, :, :3] == 1).all() and (saved["keys"][:, :, 3:] == 0).all()
