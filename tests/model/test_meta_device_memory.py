"""The kNN store on the meta device (a GPU stand-in with no data): add, reset and search read nothing back
from the device. The models (reformer-tiny, memorizing-tiny) run on meta in test_meta_device.py."""

import torch

from longrange.memory.knn_store import KNNMemory


def test_knn_store_on_meta_adds_searches_and_resets():
    memory = KNNMemory(2, 8, 2, 4, device="meta")
    memory.add(torch.randn(2, 2, 5, 4, device="meta"), torch.randn(2, 2, 5, 4, device="meta"))
    memory.reset(torch.tensor([True, False], device="meta"))
    keys, values, scores, mask = memory.search(torch.randn(2, 2, 3, 4, device="meta"), 4)
    assert keys.shape == (2, 2, 3, 4, 4) and mask.shape == (2, 2, 3, 4) and keys.device.type == "meta"
