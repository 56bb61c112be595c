"""kNN memory benchmarks: search time, index build time and recall vs memory size per backend, on
two key distributions; the training-step overhead of a kNN layer relative to the same model
without memory.

Key distributions (unit vectors, d = 64 by default):
- ``random``: uniform on the sphere. The hardest case for approximate search: no structure, and
  in 64 dimensions the 32 nearest neighbours are barely nearer than the rest.
- ``clustered``: a stand-in for a trained model's keys, which are normalised and gather around a
  limited set of directions (tokens and contexts that recur). 1024 random centres; each key is
  ``normalise(centre + 0.75 * g / sqrt(d))`` with g standard normal, i.e. cosine ~0.8 to its
  centre. Queries are drawn the same way (a query looks for keys of its own kind).

Precision: in a bf16 run (``--precision bf16``, or ``auto`` where the device has fast bf16 matrix products)
the keys and queries are rounded to bf16, as the kNN layer of a run under bf16 autocast makes them, and the
exact search runs twice: over a float32 store (the ground truth and the time to beat, as in fp32) and over a
bf16 store (`KNNMemory` in 16 bits), whose recall@k is its agreement with the float32 search. faiss indexes hold
float32 (faiss refuses bf16). The step overhead runs its models under the autocast of the precision.
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from longrange.config import ModelConfig
from longrange.memory.knn_store import KNNMemory
from longrange.model.build import build_model
from longrange.runtime import autocast, autocast_dtype, synchronize

DISTRIBUTIONS = ("clustered", "random")
N_CENTRES, SPREAD = 1024, 0.75


def available_backends(backends: list[str], threads: int) -> list[str]:
    """`backends` less the faiss ones when faiss is not installed; sets torch's and faiss's thread counts alike."""
    torch.set_num_threads(threads)
    try:
        import faiss  # optional here: without it the faiss backends are left out
    except ImportError:
        return [b for b in backends if not b.startswith("faiss")]
    faiss.omp_set_num_threads(threads)  # the same thread count for torch and faiss
    return list(backends)


def make_keys(distribution: str, n: int, dim: int, seed: int) -> torch.Tensor:
    """(n, dim) unit vectors from `distribution` (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    if distribution == "random":
        return F.normalize(torch.randn(n, dim, generator=g), dim=-1)
    if distribution == "clustered":
        centres = F.normalize(torch.randn(N_CENTRES, dim, generator=torch.Generator().manual_seed(12345)), dim=-1)
        which = torch.randint(0, N_CENTRES, (n,), generator=g)
        return F.normalize(centres[which] + SPREAD * torch.randn(n, dim, generator=g) / dim**0.5, dim=-1)
    raise ValueError(f"key distribution {distribution!r} is not one of {list(DISTRIBUTIONS)}")


def _recall(truth: torch.Tensor, found: torch.Tensor) -> float:
    """Fraction of the exact top-k slots (Q, k) that the approximate search found."""
    hits = (truth[:, :, None] == found[:, None, :]).any(-1)  # (Q, k)
    return hits.float().mean().item()


def search_points(
    sizes: list[int],
    backends: list[str],
    distributions: list[str],
    dim: int = 64,
    queries: int = 512,
    k: int = 32,
    repeats: int = 3,
    index_options: dict | None = None,
    hnsw_random_max: int = 262144,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
):
    """Yield one row per (distribution, size, backend, store precision): median search time of `queries` queries,
    build time (faiss index construction incl. IVF training and HNSW graph), recall@k against the exact float32
    search and time relative to it. HNSW on random keys is skipped above `hnsw_random_max` (its build takes many
    minutes there, for a recall far below target anyway). ``precision`` "bf16" adds the exact search over a bf16
    store, on keys rounded to bf16 (module docstring). The exact backend's store lives on `device` (faiss: the
    CPU)."""
    device = torch.device(device)
    low = autocast_dtype(precision)
    runs = [("exact", torch.float32)] + ([("exact", low)] if low is not None else [])
    runs += [(b, torch.float32) for b in backends if b != "exact"]  # faiss: float32 only
    for distribution in distributions:
        for size in sizes:
            keys = make_keys(distribution, size, dim, seed=0).view(1, 1, size, dim)  # (B=1, H=1, M, E)
            q = make_keys(distribution, queries, dim, seed=1).view(1, 1, queries, dim)
            if low is not None:  # as the kNN layer makes them under the run's autocast
                keys, q = keys.to(low).float(), q.to(low).float()
            truth, exact_s = None, None
            for backend, dtype in runs:
                if backend == "faiss-hnsw" and distribution == "random" and size > hnsw_random_max:
                    continue
                where = device if backend == "exact" else torch.device("cpu")
                memory = KNNMemory(1, size, 1, dim, backend=backend, dtype=dtype, device=where, **(index_options or {}))
                memory.add(keys.to(where), keys.to(where))
                queries_here = q.to(where)
                start = time.perf_counter()
                if backend != "exact":
                    memory._ensure_faiss()  # the index is built lazily at the first search
                build_s = time.perf_counter() - start
                memory.search_slots(queries_here, k)  # warm-up
                times = []
                for _ in range(repeats):
                    synchronize(where)
                    start = time.perf_counter()
                    _, slots = memory.search_slots(queries_here, k)
                    synchronize(where)
                    times.append(time.perf_counter() - start)
                slots = slots.cpu()
                if truth is None:  # the exact backend runs first: the ground truth and the time to beat
                    truth, exact_s = slots[0, 0], statistics.median(times)
                row = {
                    "distribution": distribution,
                    "size": size,
                    "backend": backend,
                    "precision": "fp32" if dtype == torch.float32 else precision,
                    "search_s": statistics.median(times),
                    "build_s": build_s,
                    "recall": _recall(truth, slots[0, 0]),
                    "speedup_vs_exact": exact_s / statistics.median(times),
                }
                del memory
                if backend in backends:
                    yield row


FILL_CHUNK = 65536  # entries per row added at once when filling a store (a 1M-entry fill in one go: 4x its size)


def fill_knn_memories(state, batch_size: int, dtype: torch.dtype = torch.float32) -> None:
    """Fill every kNN store of `state` to capacity with random unit keys (search cost = a full memory), in `dtype`
    (bf16: what a bf16 run adds, so that an empty store of a float32 model becomes a bf16 one), made on the
    store's device `FILL_CHUNK` entries per row at a time."""
    for layer in state.layers:
        store = getattr(layer, "store", None) if layer is not None else None
        if store is None:
            continue
        device = store.keys.device
        g = torch.Generator(device).manual_seed(0)
        for start in range(0, store.capacity, FILL_CHUNK):
            n = min(FILL_CHUNK, store.capacity - start)
            keys = torch.randn(batch_size, store.n_heads, n, store.dim, generator=g, device=device)
            keys = F.normalize(keys, dim=-1).to(dtype)
            store.add(keys, keys)


def step_overhead(
    memory_sizes: list[int],
    steps: int = 5,
    batch_size: int = 4,
    preset: str = "memorizing-small",
    precision: str = "fp32",
    device: str | torch.device = "cpu",
):
    """Seconds per training step (forward, backward, AdamW) of `preset` with each memory size vs M = 0, under the
    autocast of `precision` (a decided one: fp32, bf16 or fp16; bf16 memories are filled with bf16 entries), with
    the models and their stores on `device`.

    The models are stepped in turn (round robin), so load drifts on a shared machine hit them all
    alike; each memory is full, so every timed step searches M entries. Returns one row per size.
    """
    entries = torch.bfloat16 if precision == "bf16" else torch.float32
    device = torch.device(device)
    runs = []
    for size in [0, *memory_sizes]:
        torch.manual_seed(0)
        model = build_model(ModelConfig.from_name(preset, **{"knn.memory_size": size})).to(device)
        state = model.init_state(batch_size)
        fill_knn_memories(state, batch_size, entries)
        runs.append({"size": size, "model": model, "state": state, "times": []})
        runs[-1]["opt"] = torch.optim.AdamW(model.parameters(), lr=1e-4)
    seg = runs[0]["model"].config.segment_len
    g = torch.Generator().manual_seed(1)
    for step in range(steps + 1):
        tokens = torch.randint(0, 256, (batch_size, seg), generator=g).to(device)
        for run in runs:
            synchronize(device)
            start = time.perf_counter()
            with autocast(device, precision):
                out = run["model"](tokens, state=run["state"], targets=tokens)
            out.loss.backward()
            run["opt"].step()
            run["opt"].zero_grad()
            run["state"] = out.state.detach()
            synchronize(device)
            if step > 0:  # the first step warms up allocators
                run["times"].append(time.perf_counter() - start)
    rows = [{"memory_size": r["size"], "precision": precision, "step_s": statistics.median(r["times"])} for r in runs]
    for r in rows:
        r["ratio"] = r["step_s"] / rows[0]["step_s"]
    return rows
