"""The exact kNN search prunes by group maxima and still equals a brute-force top-k over every score.

Keys and queries hold small integers, so every inner product is exact in float32 whatever order the matmul
sums in: the search's scores can then be compared for equality with one matmul over the whole memory.
"""

import pytest
import torch
from torch.overrides import TorchFunctionMode

import longrange.memory.knn_store as knn_store
from longrange.memory.knn_store import KNNMemory

E = 8


def _integers(shape: tuple[int, ...], g: torch.Generator, high: int = 1000) -> torch.Tensor:
    return torch.randint(-high, high + 1, shape, generator=g).float()


def _filled(b: int, h: int, capacity: int, sizes: list[int], g: torch.Generator, **options) -> KNNMemory:
    memory = KNNMemory(b, capacity, h, E, **options)
    for n in sizes:
        keys = _integers((b, h, n, E), g)
        memory.add(keys, keys)
    return memory


def _assert_exact(memory: KNNMemory, queries: torch.Tensor, k: int) -> None:
    """scores (B, H, Q, k) equal the brute-force top-k exactly; slots hold those scores, are distinct, and are
    the brute-force slots wherever the top k is unique (its k-th score above the next)."""
    scores, slots = memory.search_slots(queries, k)
    every = (queries @ memory.keys.transpose(-1, -2)).masked_fill(~memory.valid()[:, None, None], float("-inf"))
    brute = every.topk(min(k + 1, memory.capacity), dim=-1)  # (B, H, Q, k + 1): one more, to spot ties
    torch.testing.assert_close(scores, brute.values[..., :k], rtol=0, atol=0)
    found = torch.isfinite(scores)
    assert torch.equal(every.gather(-1, slots)[found], scores[found])
    used = min(memory._max_added_host, memory.capacity)
    assert 0 <= int(slots.min()) and int(slots.max()) < used  # -inf results too point at written slots
    ordered = slots.masked_fill(~found, -1).sort(-1).values
    assert not ((ordered[..., 1:] == ordered[..., :-1]) & (ordered[..., 1:] >= 0)).any()
    if brute.values.shape[-1] > k:
        unique = brute.values[..., k - 1] > brute.values[..., k]  # (B, H, Q)
        same = ordered == brute.indices[..., :k].masked_fill(~found, -1).sort(-1).values
        assert same.all(-1)[unique].all()


@pytest.mark.parametrize(
    ("b", "h", "capacity", "sizes", "k", "chunk"),
    [
        (1, 1, 100, [100], 8, 65536),  # at most 4k groups of slots: one topk over all the scores
        (1, 1, 4000, [2000, 1007], 8, 65536),  # 3007 slots: a tail that is not a whole group
        (2, 3, 3000, [2999], 4, 65536),  # B, H > 1
        (2, 2, 3000, [1500, 1499], 4, 48),  # several chunks of 3 groups (fewer than k: all kept)
        (2, 2, 3000, [3000, 1234], 4, 7),  # a chunk smaller than a group, after the ring wrapped
        (1, 2, 8000, [8000], 32, 1024),  # chunks of k groups or more, ranked against the running k-th maximum
    ],
)
def test_search_equals_brute_force_top_k(b, h, capacity, sizes, k, chunk):
    g = torch.Generator(torch.get_default_device()).manual_seed(capacity + k)
    memory = _filled(b, h, capacity, sizes, g, search_chunk=chunk)
    _assert_exact(memory, _integers((b, h, 37, E), g), k)


def test_search_equals_brute_force_after_a_reset_and_with_padding():
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    memory = _filled(2, 2, 4000, [3000], g)
    memory.reset(torch.tensor([True, False]))  # row 0's 3000 slots are stale, row 1 keeps them
    keys = _integers((2, 2, 20, E), g)
    memory.add(keys, keys, valid=torch.rand(2, 20, generator=g) > 0.3)  # padded entries are never found
    queries = _integers((2, 2, 50, E), g)
    _assert_exact(memory, queries, 32)  # grouped: row 0 holds fewer than k live entries, the rest is -inf
    _assert_exact(memory, queries, 4)  # over 16 k groups of slots: one (row, head) at a time, with the stale mask
    _assert_exact(memory, queries, 200)  # 4k groups of slots or more: one topk


def test_search_equals_brute_force_with_ties():
    g = torch.Generator(torch.get_default_device()).manual_seed(2)
    memory = KNNMemory(1, 5000, 2, E, search_chunk=512)
    keys = _integers((1, 2, 5000, E), g, high=2)  # a few hundred distinct scores over 5000 slots
    memory.add(keys, keys)
    _assert_exact(memory, _integers((1, 2, 40, E), g, high=2), 32)


# merges after every chunk / every 3 (10 chunks: 1 left); a memory this large is searched one (row, head) at a time
@pytest.mark.parametrize("held", [1 << 12, 1 << 15])
def test_search_equals_brute_force_through_merges_and_the_running_bound(monkeypatch, held):
    """Small score blocks: 10 chunks of 128 groups (ranked against the running k-th maximum), whose kept groups
    are merged several times before the last top-k."""
    for budget in ("_CPU_SCORE_FLOATS", "_SCORE_FLOATS"):  # the CPU one, and the one on other devices
        monkeypatch.setattr(knn_store, budget, 1 << 12)  # chunks of 16 k groups, the least allowed
    monkeypatch.setattr(knn_store, "_CANDIDATE_FLOATS", held)
    g = torch.Generator(torch.get_default_device()).manual_seed(3)
    memory = _filled(2, 2, 20000, [20000, 3333], g)  # wrapped: the newest 20000 of 23333
    merges = []
    original = knn_store._keep_best_groups
    monkeypatch.setattr(knn_store, "_keep_best_groups", lambda *args: merges.append(1) or original(*args))
    _assert_exact(memory, _integers((2, 2, 70, E), g), 8)
    assert len(merges) > 1


class _TopkWidths(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.widths = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.topk, torch.Tensor.topk):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
            self.widths.append(args[0].shape[dim])
        return func(*args, **kwargs)


def test_no_top_k_runs_over_a_whole_chunk_of_scores():
    """The point of grouping: top-k only ever sees group maxima and kept candidates, never a row of scores."""
    g = torch.Generator(torch.get_default_device()).manual_seed(4)
    memory = _filled(1, 1, 1 << 16, [1 << 16], g)
    with _TopkWidths() as record:
        memory.search_slots(_integers((1, 1, 8, E), g), 4)
    assert record.widths and max(record.widths) <= (1 << 16) // knn_store._GROUP


def test_grouped_search_runs_on_the_meta_device():
    memory = KNNMemory(2, 4096, 2, E, device="meta")
    memory.add(torch.zeros(2, 2, 3000, E, device="meta"), torch.zeros(2, 2, 3000, E, device="meta"))
    scores, slots = memory.search_slots(torch.zeros(2, 2, 5, E, device="meta"), 4)
    assert scores.shape == slots.shape == (2, 2, 5, 4) and scores.device.type == "meta"
