"""Shared fixtures: deterministic single-thread torch, a tiny text corpus on disk."""

import random

import pytest
import torch

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default="cpu",
        help="default device of the tensors and models tests make (`make test-gpu`: cuda); CI runs cpu",
    )


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    random.seed(0)


@pytest.fixture(autouse=True)
def _default_device(request):
    """`--device cuda` runs the same tests with every factory-made tensor and module on the GPU."""
    device = request.config.getoption("--device")
    if device == "cpu":
        yield
        return
    if request.node.get_closest_marker("cpu_only"):
        pytest.skip(f"CPU code, not run with --device {device}")
    torch.set_default_device(device)
    try:
        yield
    finally:
        torch.set_default_device("cpu")


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
