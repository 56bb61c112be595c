"""`bench knn` fills a store in chunks (a 1M-entry store made at once took 4x its size): every slot is written."""

import torch

import longrange
from longrange.bench import knn


def test_a_store_larger_than_a_chunk_is_filled_to_capacity(monkeypatch):
    monkeypatch.setattr(knn, "FILL_CHUNK", 4)
    model = longrange.build_model(longrange.ModelConfig.from_name("memorizing-tiny", **{"knn.memory_size": 10}))
    state = model.init_state(2)
    knn.fill_knn_memories(state, 2, torch.bfloat16)
    (store,) = [layer.store for layer in state.layers if getattr(layer, "store", None) is not None]
    assert store.count.tolist() == [10, 10] and store.dtype == torch.bfloat16
    assert torch.allclose(store.keys.float().norm(dim=-1), torch.ones(()), atol=1e-2)  # unit keys, every slot
