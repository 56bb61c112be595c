"""Shared fixtures: deterministic single-thread torch, a tiny text corpus on disk."""

import random

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


def make_documents(n: int = 8, seed: int = 0) -> list[bytes]:
    """Small repetitive documents of different lengths (learnable in a few dozen steps)."""
    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "def", "return", "self", "import"]
    docs = []
    for i in range(n):
        doc = " ".join(rng.choice(words) for _ in range(60 + 17 * i))
        docs.append(f"# doc {i}\n{doc}\n".encode())
    return docs


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i, doc in enumerate(make_documents()):
        (root / f"doc{i}.txt").write_bytes(doc)
    return root
