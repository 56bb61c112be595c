"""KNNMemory: exact == brute force, faiss == exact, FIFO eviction, per-row reset, persistence."""

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from longrange.memory.knn_store import KNNMemory

B, H, E = 2, 2, 8


def _filled(backend: str, capacity: int = 16, adds: int = 5, n: int = 6, seed: int = 0):
    g = torch.Generator(torch.get_default_device()).manual_seed(seed)
    memory = KNNMemory(B, capacity, H, E, backend=backend)
    history = []
    for i in range(adds):
        keys = torch.randn(B, H, n, E, generator=g)
        memory.add(keys, keys * 2, positions=torch.arange(i * n, (i + 1) * n).expand(B, n))
        history.append(keys)
    return memory, torch.cat(history, dim=2)


def test_exact_equals_brute_force_over_the_newest_entries():
    memory, history = _filled("exact", capacity=16)
    live = history[:, :, -16:]  # FIFO: exactly the newest 16 survive
    queries = torch.randn(B, H, 5, E)
    keys, values, scores, mask = memory.search(queries, 4)
    brute = (queries @ live.transpose(-1, -2)).topk(4, dim=-1)
    torch.testing.assert_close(scores, brute.values)
    torch.testing.assert_close(
        keys, live.unsqueeze(2).expand(-1, -1, 5, -1, -1).gather(3, brute.indices[..., None].expand(-1, -1, -1, -1, E))
    )
    torch.testing.assert_close(values, keys * 2)  # results match the stored rows
    assert mask.all()


def test_fifo_after_overflow_keeps_exactly_the_newest_entries():
    memory, history = _filled("exact", capacity=10, adds=7, n=3)
    assert memory.count.tolist() == [10, 10]
    stored = memory.keys[:, :, memory.valid()[0]]
    expected = history[:, :, -10:]
    # same set of vectors (slot order is a ring): compare sorted by first coordinate
    order = lambda x: x.gather(2, x[..., :1].argsort(dim=2).expand_as(x))  # noqa: E731
    torch.testing.assert_close(order(stored), order(expected))
    assert sorted(memory.position[0].tolist()) == list(range(21 - 10, 21))


def test_search_chunking_does_not_change_results():
    memory, _ = _filled("exact", capacity=40, adds=8)
    queries = torch.randn(B, H, 3, E)
    whole = memory.search(queries, 5)[2]
    memory.search_chunk = 7
    torch.testing.assert_close(memory.search(queries, 5)[2], whole)


@pytest.mark.parametrize("backend", ["faiss-flat"])
def test_faiss_flat_equals_exact(backend):
    exact, _ = _filled("exact", capacity=16, adds=5)
    other, _ = _filled(backend, capacity=16, adds=5)
    queries = torch.randn(B, H, 4, E)
    a, b = exact.search(queries, 6), other.search(queries, 6)
    torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a[1], b[1], rtol=1e-5, atol=1e-5)
    # keep adding past capacity (faiss ids go stale, indexes get rebuilt): still equal
    for _ in range(6):
        keys = torch.randn(B, H, 5, E)
        exact.add(keys, keys * 2)
        other.add(keys, keys * 2)
    a, b = exact.search(queries, 6), other.search(queries, 6)
    torch.testing.assert_close(a[2], b[2], rtol=1e-5, atol=1e-5)


def _recall(backend: str, keys: torch.Tensor, queries: torch.Tensor, k: int = 10, **options) -> float:
    exact = KNNMemory(1, keys.shape[2], 1, keys.shape[3])
    approx = KNNMemory(1, keys.shape[2], 1, keys.shape[3], backend=backend, **options)
    for m in (exact, approx):
        m.add(keys, keys)
    truth, found = exact.search_slots(queries, k)[1], approx.search_slots(queries, k)[1]
    return sum(len(set(t.tolist()) & set(f.tolist())) for t, f in zip(truth[0, 0], found[0, 0], strict=True)) / (
        truth[0, 0].numel()
    )


@pytest.mark.parametrize("backend", ["faiss-hnsw", "faiss-ivf"])
def test_approximate_recall_with_default_settings_on_clustered_keys(backend):
    """The defaults are tuned on clustered keys (like a trained model's; see bench/knn.py)."""
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    centres = F.normalize(torch.randn(64, 32, generator=g), dim=-1)
    draw = lambda n: F.normalize(  # noqa: E731
        centres[torch.randint(0, 64, (n,), generator=g)] + 0.75 * torch.randn(n, 32, generator=g) / 32**0.5, dim=-1
    )
    assert _recall(backend, draw(4096).view(1, 1, -1, 32), draw(64).view(1, 1, -1, 32)) >= 0.95


def test_hnsw_recall_on_random_keys_with_a_wider_search():
    """Random unit vectors are the hardest case: a larger efSearch buys the recall back."""
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    keys = F.normalize(torch.randn(1, 1, 2048, 32, generator=g), dim=-1)
    queries = F.normalize(torch.randn(1, 1, 64, 32, generator=g), dim=-1)
    assert _recall("faiss-hnsw", keys, queries, ef_search=512) >= 0.9


@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
def test_reset_clears_only_the_given_rows(backend):
    memory, _ = _filled(backend)
    queries = torch.randn(B, H, 3, E)
    before = memory.search(queries, 4)
    memory.reset(torch.tensor([True, False]))
    after = memory.search(queries, 4)
    assert not after[3][0].any()  # row 0 is empty
    torch.testing.assert_close(after[2][1], before[2][1])  # row 1 unchanged
    new = torch.randn(B, H, 2, E)
    memory.add(new, new)
    assert memory.count.tolist() == [2, 16]
    keys = memory.search(queries, 4)[0]
    assert memory.search(queries, 4)[3][0].sum() == H * 3 * 2  # only the two new entries are found
    for q in range(3):  # and they are the new ones, never entries from before the reset
        found = keys[0, 0, q][memory.search(queries, 4)[3][0, 0, q]]
        assert all(any(torch.allclose(f, n) for n in new[0, 0]) for f in found)


def test_memory_is_never_differentiable():
    memory = KNNMemory(1, 8, 1, 4)
    keys = torch.randn(1, 1, 4, 4, requires_grad=True)
    memory.add(keys * 1, keys * 1)
    assert not memory.keys.requires_grad and not memory.values.requires_grad


def test_save_and_load_round_trip(tmp_path):
    memory, _ = _filled("exact")
    memory.save(tmp_path / "memory.safetensors")
    other = KNNMemory(B, 16, H, E)
    other.load(tmp_path / "memory.safetensors")
    queries = torch.randn(B, H, 3, E)
    torch.testing.assert_close(other.search(queries, 4)[2], memory.search(queries, 4)[2])


@pytest.mark.cpu_only  # disk storage maps its files into CPU memory
@pytest.mark.parametrize("backend", ["exact", "faiss-flat"])
def test_disk_storage_gives_the_same_results_fifo_and_reset(tmp_path, backend):
    g = torch.Generator(torch.get_default_device()).manual_seed(3)
    ram = KNNMemory(B, 10, H, E, backend=backend)
    disk = KNNMemory(B, 10, H, E, backend=backend, storage="disk", directory=tmp_path)
    assert disk.keys.untyped_storage().nbytes() == B * H * 10 * E * 4 and any(tmp_path.iterdir())
    queries = torch.randn(B, H, 4, E, generator=g)
    for step in range(7):  # past capacity (FIFO) with a reset of row 0 half way
        keys = torch.randn(B, H, 3, E, generator=g)
        for memory in (ram, disk):
            memory.add(keys, keys * 2, positions=torch.arange(3 * step, 3 * step + 3).expand(B, 3))
            if step == 3:
                memory.reset(torch.tensor([True, False]))
        for a, b in zip(ram.search(queries, 5), disk.search(queries, 5), strict=True):
            assert torch.equal(a, b)
    assert torch.equal(ram.position, disk.position) and ram.count.tolist() == disk.count.tolist() == [9, 10]


@pytest.mark.cpu_only
def test_disk_storage_writes_through_to_its_files_and_round_trips(tmp_path):
    disk = KNNMemory(1, 4, 1, 2, storage="disk", directory=tmp_path)
    disk.add(torch.ones(1, 1, 3, 2), torch.full((1, 1, 3, 2), 2.0))
    (process_folder,) = tmp_path.iterdir()  # one folder per process, one inside it per store
    (folder,) = process_folder.iterdir()
    on_file = np.fromfile(folder / "keys.f32", dtype=np.float32).reshape(1, 1, 4, 2)
    assert on_file[0, 0, :3].tolist() == [[1.0, 1.0]] * 3 and on_file[0, 0, 3].tolist() == [0.0, 0.0]
    disk.save(tmp_path / "memory.safetensors")  # a checkpoint of a disk memory loads into either storage
    for storage in ("memory", "disk"):
        other = KNNMemory(1, 4, 1, 2, storage=storage, directory=tmp_path)
        other.load(tmp_path / "memory.safetensors")
        queries = torch.randn(1, 1, 2, 2)
        assert torch.equal(other.search(queries, 2)[1], disk.search(queries, 2)[1])
    assert other.keys.untyped_storage().nbytes() == 4 * 2 * 4  # still the mapped file after loading
    del disk, other
    gc.collect()
    assert not folder.exists() and not process_folder.exists()  # files go with the store


def test_disk_storage_refuses_an_accelerator():
    with pytest.raises(ValueError, match="storage='disk'"):
        KNNMemory(1, 4, 1, 2, storage="disk", device="meta")
    with pytest.raises(ValueError, match="knn.storage"):
        KNNMemory(1, 4, 1, 2, storage="tape")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_the_store_follows_its_dtype_and_converts_on_the_way_in_and_out(tmp_path, dtype, storage):
    if storage == "disk" and torch.get_default_device().type != "cpu":
        pytest.skip("disk storage maps its files into CPU memory")
    memory = KNNMemory(B, 8, H, E, storage=storage, directory=tmp_path, dtype=dtype)
    keys = F.normalize(torch.randn(B, H, 6, E), dim=-1)
    memory.add(keys, keys * 2)  # float32 in: converted to the store's dtype
    assert memory.keys.dtype == dtype
    found_keys, values, scores, mask = memory.search(keys[:, :, :2].to(torch.float32), 1)
    assert found_keys.dtype == scores.dtype == torch.float32  # out in the queries' dtype
    tolerance = 1e-12 if dtype == torch.float64 else 1e-2
    torch.testing.assert_close(found_keys[..., 0, :], keys[:, :, :2], rtol=0, atol=tolerance)  # each finds itself
    assert memory.search(keys.to(dtype), 1)[0].dtype == dtype


def test_padded_entries_take_slots_but_are_never_found():
    memory = KNNMemory(1, 4, 1, 2)
    memory.add(torch.ones(1, 1, 3, 2), torch.ones(1, 1, 3, 2), valid=torch.tensor([[True, False, True]]))
    assert memory.count.tolist() == [2]
    _, _, scores, mask = memory.search(torch.ones(1, 1, 1, 2), 4)
    assert mask.sum().item() == 2
    memory.add(torch.ones(1, 1, 4, 2), torch.ones(1, 1, 4, 2))  # the padded slot is overwritten: all live again
    assert memory.count.tolist() == [4] and memory.search(torch.ones(1, 1, 1, 2), 4)[3].all()


def test_files_of_a_dead_process_are_reclaimed_at_the_next_start(tmp_path):
    import socket
    import subprocess
    import sys

    from longrange.memory.knn_store import PREFIX, _process_folder_name

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / _process_folder_name(int(dead.stdout))  # the pid of an exited process
    (stale / "store-x").mkdir(parents=True)
    (stale / "store-x" / "keys.f32").write_bytes(b"\0" * 64)
    host = socket.gethostname().replace("-", "_")
    other_host = tmp_path / f"{PREFIX}elsewhere-{dead.stdout.strip()}-0"  # another machine on a shared disk
    other_host.mkdir()
    live = tmp_path / _process_folder_name()  # this process: alive
    live.mkdir()
    assert host != "elsewhere"
    memory = KNNMemory(1, 4, 1, 2, storage="disk", directory=tmp_path)
    assert not stale.exists() and other_host.exists() and live.exists()
    assert memory.directory.parent == live
