"""`KNNMemory`: the Memorizing Transformer's external, non-differentiable (key, value) store.

Shape legend: B batch rows (one document each), H heads, M capacity per row, N entries added,
Q queries, k neighbours, E head width.

One partition per (row, head), as in the paper and meliad (each head retrieves from its own
memory). Each row is a FIFO ring buffer of capacity M: when full, the *oldest* entries are
overwritten one by one (never the whole memory; the public port resets its index on overflow).
``reset(rows)`` empties exactly those rows (a new document). Entries are stored detached, so no
gradient ever reaches the memory. Keys are stored as given; the kNN attention layer L2-normalises
keys and queries before adding and searching, as in the paper.

Backends:
- ``exact``: torch matmul + top-k, chunked over the memory so a million entries fit (the oracle);
- ``faiss-flat``: faiss ``IndexFlatIP`` per (row, head) (exact, same results as ``exact``);
- ``faiss-hnsw`` / ``faiss-ivf``: approximate indexes (settings below, chosen with ``longrange bench knn``).
faiss indexes hold the ring buffer's entries under ids = insertion number; an id is live while it
is among the newest M of its row (and after the row's last reset). Searches ask faiss for enough
extra neighbours to skip stale ids, and an index is rebuilt from the live entries once stale ones
outnumber live ones, so FIFO eviction and per-row reset hold for every backend.

Storage: ``"memory"`` keeps keys and values in RAM (or on the GPU); ``"disk"`` keeps them in two
memory-mapped files (numpy ``memmap`` viewed as torch tensors) in a fresh folder under ``directory``,
so a memory larger than RAM pages in and out as searched. Both run the same code on the same
tensors, so results are identical; the files are deleted when the store is garbage-collected.
Positions and counters stay in RAM (8 bytes per slot vs 2 x 4 x H x E for keys and values).
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

BACKENDS = ("exact", "faiss-flat", "faiss-hnsw", "faiss-ivf")
STORAGES = ("memory", "disk")


class KNNMemory:
    def __init__(
        self,
        batch_size: int,
        capacity: int,
        n_heads: int,
        dim: int,
        backend: str = "exact",
        device: torch.device | str = "cpu",
        search_chunk: int = 65536,
        storage: str = "memory",
        directory: str | Path | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        ivf_lists: int | None = None,
        ivf_probe: int | None = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"knn.backend={backend!r} is not one of {list(BACKENDS)}")
        if storage not in STORAGES:
            raise ValueError(f"knn.storage={storage!r} is not one of {list(STORAGES)}")
        if storage == "disk" and torch.device(device).type != "cpu":
            raise ValueError(f"knn.storage='disk' maps files into CPU memory; use device 'cpu', not {device!r}")
        if capacity < 1:
            raise ValueError(f"knn.memory_size={capacity} must be >= 1")
        self.batch_size, self.capacity, self.n_heads, self.dim = batch_size, capacity, n_heads, dim
        self.backend, self.search_chunk, self.storage = backend, search_chunk, storage
        # approximate-index settings (see `longrange bench knn` for the recall/speed they give)
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.ivf_lists = ivf_lists or max(1, 4 * int(capacity**0.5))  # faiss guideline: 4 sqrt(N) lists
        self.ivf_probe = ivf_probe or max(4, self.ivf_lists // 128)  # ~1% of the lists (tuned on clustered keys)
        self.directory = None
        if storage == "disk":
            root = Path(directory if directory is not None else tempfile.gettempdir())
            root.mkdir(parents=True, exist_ok=True)
            self.directory = Path(tempfile.mkdtemp(prefix="knn-memory-", dir=root))
            weakref.finalize(self, shutil.rmtree, str(self.directory), True)
        shape = (batch_size, n_heads, capacity, dim)
        self.keys = self._allocate("keys", shape, device)  # (B, H, M, E)
        self.values = self._allocate("values", shape, device)  # (B, H, M, E)
        self.position = torch.full((batch_size, capacity), -1, dtype=torch.long, device=device)  # token index
        self.added = torch.zeros(batch_size, dtype=torch.long, device=device)  # entries ever added (per row)
        self.live_from = torch.zeros(batch_size, dtype=torch.long, device=device)  # first id after last reset
        self._faiss: list[list] | None = None  # [row][head] -> faiss index (faiss backends)
        self._keepalive: list = []

    def _allocate(self, name: str, shape: tuple[int, ...], device) -> Tensor:
        if self.storage == "memory":
            return torch.zeros(shape, device=device)
        array = np.memmap(self.directory / f"{name}.f32", dtype=np.float32, mode="w+", shape=shape)  # zero-filled
        return torch.from_numpy(array)  # shares the mapping: writes go to the file

    # ------------------------------------------------------------------ bookkeeping
    @property
    def count(self) -> Tensor:
        """(B,) live entries per row."""
        return (self.added - self.live_from).clamp(max=self.capacity)

    def valid(self) -> Tensor:
        """(B, M) bool: slots holding a live entry."""
        slot_id = self._slot_ids()
        return (slot_id >= self.live_from[:, None]) & (slot_id >= self.added[:, None] - self.capacity) & (slot_id >= 0)

    def _slot_ids(self) -> Tensor:
        """(B, M) insertion id of the entry in each slot (-1 when never written)."""
        slots = torch.arange(self.capacity, device=self.added.device)
        last = self.added[:, None] - 1  # id of the newest entry
        # newest id with id % M == slot
        ids = last - ((last - slots) % self.capacity)
        return torch.where(self.added[:, None] > 0, ids, torch.full_like(ids, -1))

    def to(self, device) -> KNNMemory:
        if self.storage == "disk" and torch.device(device).type != "cpu":
            raise ValueError("a knn.storage='disk' memory stays on the CPU; use knn.storage='memory' on an accelerator")
        for name in ("keys", "values", "position", "added", "live_from"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    # ------------------------------------------------------------------ the three operations
    @torch.no_grad()
    def add(self, keys: Tensor, values: Tensor, positions: Tensor | None = None) -> None:
        """Append keys/values (B, H, N, E) to every row (oldest entries evicted at capacity).

        ``positions`` (B, N) are the tokens' indices in their documents (kept for inspection).
        """
        b, h, n, e = keys.shape
        if (b, h, e) != (self.batch_size, self.n_heads, self.dim) or values.shape != keys.shape:
            expected = (self.batch_size, self.n_heads, "N", self.dim)
            raise ValueError(
                f"keys {tuple(keys.shape)} / values {tuple(values.shape)} do not fit a memory of shape {expected}"
            )
        if positions is None:
            positions = torch.full((b, n), -1, dtype=torch.long, device=keys.device)
        if n > self.capacity:  # only the newest M can survive
            keys, values, positions = (
                keys[:, :, -self.capacity :],
                values[:, :, -self.capacity :],
                positions[:, -self.capacity :],
            )
            self.added += n - self.capacity
            n = self.capacity
        first_id = self.added.clone()
        if bool((first_id == first_id[0]).all()):  # rows in step (always, unless loaded otherwise): <= 2 slices
            start = int(first_id[0]) % self.capacity
            head = min(n, self.capacity - start)  # up to the end of the ring, the rest wraps to slot 0
            self._write(start, 0, head, keys, values, positions)
            if head < n:
                self._write(0, head, n - head, keys, values, positions)
        else:
            slot = (first_id[:, None] + torch.arange(n, device=keys.device)) % self.capacity  # (B, N)
            index = slot[:, None, :, None].expand(b, h, n, e)
            self.keys.scatter_(2, index, keys.to(self.keys.dtype))
            self.values.scatter_(2, index, values.to(self.values.dtype))
            self.position.scatter_(1, slot, positions)
        self.added += n
        if self._faiss is not None:
            self._faiss_add(keys, first_id)

    def _write(self, slot: int, offset: int, n: int, keys: Tensor, values: Tensor, positions: Tensor) -> None:
        """Copy entries offset .. offset + n of the new keys/values/positions into slots slot .. slot + n."""
        self.keys[:, :, slot : slot + n] = keys[:, :, offset : offset + n]
        self.values[:, :, slot : slot + n] = values[:, :, offset : offset + n]
        self.position[:, slot : slot + n] = positions[:, offset : offset + n]

    @torch.no_grad()
    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Top-k neighbours of queries (B, H, Q, E) in their own row's memory.

        Returns keys (B, H, Q, k, E), values (B, H, Q, k, E), scores (B, H, Q, k) (inner products)
        and mask (B, H, Q, k) bool (False where the row holds fewer than k entries). Keys and values
        are gathered from this store by slot, so results always match the stored rows.
        """
        scores, slots = self.search_slots(queries, k)
        mask = torch.isfinite(scores)
        b, h, q, k = slots.shape
        rows = torch.arange(b * h, device=slots.device).view(b, h, 1, 1) * self.capacity
        flat = (slots.clamp(min=0) + rows).view(-1)  # index into the (B * H * M, E) view
        keys = self.keys.view(-1, self.dim).index_select(0, flat).view(b, h, q, k, self.dim)
        values = self.values.view(-1, self.dim).index_select(0, flat).view(b, h, q, k, self.dim)
        return keys, values, scores.masked_fill(~mask, 0.0), mask

    @torch.no_grad()
    def search_slots(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores, slot indices) (B, H, Q, k); scores are -inf where the row holds fewer than k entries."""
        if queries.shape[0] != self.batch_size or queries.shape[1] != self.n_heads or queries.shape[3] != self.dim:
            expected = (self.batch_size, self.n_heads, "Q", self.dim)
            raise ValueError(f"queries of shape {tuple(queries.shape)} do not fit a memory of shape {expected}")
        k = min(k, self.capacity)
        return self._exact_topk(queries, k) if self.backend == "exact" else self._faiss_topk(queries, k)

    @torch.no_grad()
    def reset(self, rows: Tensor) -> None:
        """Empty the rows `rows` (B,) bool; other rows keep every entry."""
        rows = rows.to(self.added.device)
        self.live_from = torch.where(rows, self.added, self.live_from)
        self.position.masked_fill_(rows[:, None], -1)
        if self._faiss is not None:
            for r in torch.nonzero(rows).flatten().tolist():
                self._faiss[r] = [self._new_index() for _ in range(self.n_heads)]

    # ------------------------------------------------------------------ exact backend
    def _exact_topk(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Chunked matmul + top-k per chunk, then one top-k over the chunks' winners.

        Only written slots are scanned; the live mask is applied only when some written slot is
        stale (after a reset). Score blocks are written into one reused buffer (no allocation per
        chunk) of at most ~16M floats, which also bounds peak memory at a million entries.
        """
        b, h, q, _ = queries.shape
        queries = queries.to(self.keys.dtype)
        used = min(int(self.added.max()), self.capacity)  # slots >= used were never written
        scores = torch.full((b, h, q, k), float("-inf"), device=queries.device)
        slots = torch.zeros((b, h, q, k), dtype=torch.long, device=queries.device)
        if used == 0:
            return scores, slots
        stale = None if bool((self.count == used).all()) else ~self.valid()[:, None, None, :used]  # (B, 1, 1, used)
        chunk = max(1, min(self.search_chunk, used, max(1024, (1 << 24) // (b * h * q))))
        buffer = torch.empty((b, h, q, chunk), device=queries.device)
        best_scores, best_slots = [], []
        for start in range(0, used, chunk):  # (Q x chunk) score blocks per (row, head)
            end = min(start + chunk, used)
            block = buffer if end - start == chunk else buffer[..., : end - start].contiguous()
            torch.matmul(queries, self.keys[:, :, start:end].transpose(-1, -2), out=block)  # (B, H, Q, chunk)
            if stale is not None:
                block.masked_fill_(stale[..., start:end], float("-inf"))
            top = block.topk(min(k, end - start), dim=-1)
            best_scores.append(top.values)
            best_slots.append(top.indices + start)
        merged_scores, merged_slots = torch.cat(best_scores, -1), torch.cat(best_slots, -1)
        if merged_scores.shape[-1] > k:
            top = merged_scores.topk(k, dim=-1)
            merged_scores, merged_slots = top.values, merged_slots.gather(-1, top.indices)
        n = merged_scores.shape[-1]  # < k when fewer than k slots were ever written: the rest stays -inf
        scores[..., :n], slots[..., :n] = merged_scores, merged_slots
        return scores, slots

    # ------------------------------------------------------------------ faiss backends
    def _new_index(self):
        import faiss

        if self.backend == "faiss-flat":
            return faiss.IndexIDMap(faiss.IndexFlatIP(self.dim))
        if self.backend == "faiss-hnsw":
            base = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efConstruction = self.ef_construction
            base.hnsw.efSearch = self.ef_search
        else:  # faiss-ivf: trained lazily on the first vectors it sees
            quantizer = faiss.IndexFlatIP(self.dim)
            base = faiss.IndexIVFFlat(quantizer, self.dim, self.ivf_lists, faiss.METRIC_INNER_PRODUCT)
            base.nprobe = min(self.ivf_probe, self.ivf_lists)
            self._keepalive.append(quantizer)  # faiss does not own the quantizer
        return faiss.IndexIDMap2(base)

    def _ensure_faiss(self) -> None:
        if self._faiss is None:
            self._faiss = [[self._new_index() for _ in range(self.n_heads)] for _ in range(self.batch_size)]
            live = self.valid()
            ids = self._slot_ids()
            for r in range(self.batch_size):
                for h in range(self.n_heads):
                    self._index_add(r, h, self.keys[r, h][live[r]], ids[r][live[r]])

    def _index_add(self, r: int, h: int, keys: Tensor, ids: Tensor) -> None:
        if keys.shape[0] == 0:
            return
        import faiss

        index = self._faiss[r][h]
        x = np.ascontiguousarray(keys.float().cpu().numpy())
        base = faiss.downcast_index(index.index)
        if not base.is_trained:  # IVF: learn the coarse clusters from the first entries
            base.train(x if x.shape[0] >= base.nlist else np.repeat(x, -(-base.nlist // x.shape[0]), axis=0))
        index.add_with_ids(x, np.ascontiguousarray(ids.cpu().numpy().astype(np.int64)))

    def _faiss_add(self, keys: Tensor, first_id: Tensor) -> None:
        n = keys.shape[2]
        for r in range(self.batch_size):
            ids = first_id[r].cpu() + torch.arange(n)
            for h in range(self.n_heads):
                self._index_add(r, h, keys[r, h], ids)
            if self._faiss[r][0].ntotal >= 2 * self.capacity:  # stale entries dominate: rebuild from live ones
                self._rebuild(r)

    def _rebuild(self, r: int) -> None:
        live, ids = self.valid()[r], self._slot_ids()[r]
        for h in range(self.n_heads):
            self._faiss[r][h] = self._new_index()
            self._index_add(r, h, self.keys[r, h][live], ids[live])

    def _faiss_topk(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        self._ensure_faiss()
        b, h, q, _ = queries.shape
        scores = torch.full((b, h, q, k), float("-inf"))
        slots = torch.zeros((b, h, q, k), dtype=torch.long)
        oldest_live = torch.maximum(self.live_from, self.added - self.capacity)
        for r in range(b):
            for hh in range(h):
                index = self._faiss[r][hh]
                if index.ntotal == 0:
                    continue
                stale = index.ntotal - int(self.count[r])
                want = min(index.ntotal, k + stale)
                d, i = index.search(np.ascontiguousarray(queries[r, hh].float().cpu().numpy()), want)
                d, i = torch.from_numpy(d), torch.from_numpy(i)
                live = i >= int(oldest_live[r])
                d = d.masked_fill(~live, float("-inf"))
                top = d.topk(min(k, want), dim=-1)
                scores[r, hh, :, : top.values.shape[-1]] = top.values
                slots[r, hh, :, : top.values.shape[-1]] = i.gather(-1, top.indices).clamp(min=0) % self.capacity
        return scores.to(queries.device), slots.to(queries.device)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the store's tensors; with disk storage, keys and values are the mapped files
        themselves (not copied into RAM): write them out before the next `add`, as checkpoints do."""
        names = ("keys", "values", "position", "added", "live_from")
        mapped = ("keys", "values") if self.storage == "disk" else ()
        return {name: getattr(self, name) if name in mapped else getattr(self, name).clone() for name in names}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, value in state.items():
            current = getattr(self, name)
            if current.shape != value.shape:
                raise ValueError(f"kNN memory {name} has shape {tuple(value.shape)}, expected {tuple(current.shape)}")
            current.copy_(value)  # in place: a disk memory keeps its files
        self._faiss = None  # rebuilt lazily from the restored entries

    def save(self, path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in self.state_dict().items()}, str(path))

    def load(self, path) -> None:
        from safetensors.torch import load_file

        self.load_state_dict(load_file(str(path)))
