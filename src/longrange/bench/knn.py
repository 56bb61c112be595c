"""kNN memory benchmarks: search time and recall vs memory size per backend; the training-step
overhead of a kNN layer relative to the same model without memory (same run, same data)."""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F

from longrange.memory.knn_store import KNNMemory


def search_point(backend: str, size: int, dim: int = 64, queries: int = 512, k: int = 32, repeats: int = 3) -> dict:
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(1, 1, size, dim, generator=g), dim=-1)
    q = F.normalize(torch.randn(1, 1, queries, dim, generator=g), dim=-1)
    exact = KNNMemory(1, size, 1, dim, backend="exact")
    exact.add(keys, keys)
    truth = exact.search_slots(q, k)[1]
    memory = exact if backend == "exact" else KNNMemory(1, size, 1, dim, backend=backend)
    if memory is not exact:
        memory.add(keys, keys)
    start = time.perf_counter()
    memory.search_slots(q, k)  # builds a faiss index on first use; reported separately
    build_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _, slots = memory.search_slots(q, k)
        times.append(time.perf_counter() - start)
    hits = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(truth[0, 0], slots[0, 0], strict=True))
    return {
        "backend": backend,
        "size": size,
        "search_s": statistics.median(times),
        "first_search_s": build_s,
        "recall": hits / truth[0, 0].numel(),
    }


def step_overhead(memory_sizes: list[int], steps: int = 5, batch_size: int = 4) -> list[dict]:
    """Seconds per training step of memorizing-small with each memory size vs M = 0 (no memory)."""
    from longrange.config import ModelConfig
    from longrange.model.build import build_model

    rows = []
    for size in [0, *memory_sizes]:
        torch.manual_seed(0)
        model = build_model(ModelConfig.from_name("memorizing-small", **{"knn.memory_size": size}))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        state = model.init_state(batch_size)
        seg = model.config.segment_len
        # fill the memory first, so each timed step searches a full memory
        with torch.no_grad():
            for _ in range(max(1, size // seg)):
                state = model(torch.randint(0, 256, (batch_size, seg)), state=state).state
        times = []
        for _ in range(steps + 1):
            tokens = torch.randint(0, 256, (batch_size, seg))
            start = time.perf_counter()
            out = model(tokens, state=state, targets=tokens)
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            state = out.state.detach()
            times.append(time.perf_counter() - start)
        rows.append({"memory_size": size, "step_s": statistics.median(times[1:])})
    for r in rows:
        r["ratio"] = r["step_s"] / rows[0]["step_s"]
    return rows
