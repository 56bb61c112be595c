"""The meta device (a GPU stand-in with no data) catches host syncs and tensors made on the wrong device:
reformer-tiny and memorizing-tiny run forward + backward and one cached generated token on it."""

import pytest
import torch

import longrange as lr
from longrange.config import ModelConfig
from longrange.memory.knn_store import KNNMemory


@pytest.mark.parametrize("name", ["reformer-tiny", "memorizing-tiny"])
def test_forward_backward_and_a_generated_token_on_meta(name):
    model = lr.build_model(ModelConfig.from_name(name)).to("meta")
    tokens = torch.zeros(2, 32, dtype=torch.long, device="meta")
    doc_start = torch.ones(2, dtype=torch.bool, device="meta")
    state = model.init_state(2) if model.stateful else None
    out = model(tokens, state=state, doc_start=doc_start, targets=tokens)
    out.loss.backward()
    assert out.loss.device.type == "meta" and all(p.grad is not None for p in model.parameters() if p.requires_grad)
    if model.stateful:  # a second segment: the kNN store now has entries to search
        model(tokens, state=out.state.detach(), doc_start=~doc_start, targets=tokens).loss.backward()
    model.eval()
    with torch.no_grad():  # streaming generation: a prompt into the caches, then one token
        prompt = model(tokens, state=model.init_state(2), doc_start=doc_start)
        step = model(tokens[:, :1], state=prompt.state)
    assert step.logits.shape == (2, 1, model.head.out_features) and step.logits.device.type == "meta"


def test_knn_store_on_meta_adds_searches_and_resets():
    memory = KNNMemory(2, 8, 2, 4, device="meta")
    memory.add(torch.randn(2, 2, 5, 4, device="meta"), torch.randn(2, 2, 5, 4, device="meta"))
    memory.reset(torch.tensor([True, False], device="meta"))
    keys, values, scores, mask = memory.search(torch.randn(2, 2, 3, 4, device="meta"), 4)
    assert keys.shape == (2, 2, 3, 4, 4) and mask.shape == (2, 2, 3, 4) and keys.device.type == "meta"
