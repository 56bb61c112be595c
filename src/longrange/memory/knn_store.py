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
- ``faiss-hnsw`` / ``faiss-ivf``: approximate indexes.
faiss indexes hold the ring buffer's entries under ids = insertion number; an id is live while it
is among the newest M of its row (and after the row's last reset). Searches ask faiss for enough
extra neighbours to skip stale ids, and an index is rebuilt from the live entries once stale ones
outnumber live ones, so FIFO eviction and per-row reset hold for every backend.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

BACKENDS = ("exact", "faiss-flat", "faiss-hnsw", "faiss-ivf")


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
    ):
        if backend not in BACKENDS:
            raise ValueError(f"knn.backend={backend!r} is not one of {list(BACKENDS)}")
        if capacity < 1:
            raise ValueError(f"knn.memory_size={capacity} must be >= 1")
        self.batch_size, self.capacity, self.n_heads, self.dim = batch_size, capacity, n_heads, dim
        self.backend, self.search_chunk = backend, search_chunk
        shape = (batch_size, n_heads, capacity, dim)
        self.keys = torch.zeros(shape, device=device)  # (B, H, M, E)
        self.values = torch.zeros(shape, device=device)  # (B, H, M, E)
        self.position = torch.full((batch_size, capacity), -1, dtype=torch.long, device=device)  # token index
        self.added = torch.zeros(batch_size, dtype=torch.long, device=device)  # entries ever added (per row)
        self.live_from = torch.zeros(batch_size, dtype=torch.long, device=device)  # first id after last reset
        self._faiss: list[list] | None = None  # [row][head] -> faiss index (faiss backends)
        self._keepalive: list = []

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
        if (b, h, e) != (self.batch_size, self.n_heads, self.dim):
            expected = (self.batch_size, self.n_heads, "N", self.dim)
            raise ValueError(f"keys of shape {tuple(keys.shape)} do not fit a memory of shape {expected}")
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
        slot = (self.added[:, None] + torch.arange(n, device=keys.device)) % self.capacity  # (B, N)
        index = slot[:, None, :, None].expand(b, h, n, e)
        self.keys.scatter_(2, index, keys.detach().to(self.keys.dtype))
        self.values.scatter_(2, index, values.detach().to(self.values.dtype))
        self.position.scatter_(1, slot, positions)
        first_id = self.added.clone()
        self.added += n
        if self._faiss is not None:
            self._faiss_add(keys, first_id)

    @torch.no_grad()
    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Top-k neighbours of queries (B, H, Q, E) in their own row's memory.

        Returns keys (B, H, Q, k, E), values (B, H, Q, k, E), scores (B, H, Q, k) (inner products)
        and mask (B, H, Q, k) bool (False where the row holds fewer than k entries), plus nothing else:
        slots are gathered from this store, so results always match the stored rows.
        """
        k = min(k, self.capacity)
        if self.backend == "exact":
            scores, slots = self._exact_topk(queries, k)
        else:
            scores, slots = self._faiss_topk(queries, k)
        mask = torch.isfinite(scores)
        slots = slots.clamp(min=0)
        b, h, q, _ = slots.shape
        flat = slots.reshape(b, h, q * k, 1).expand(-1, -1, -1, self.dim)
        keys = self.keys.gather(2, flat).view(b, h, q, k, self.dim)
        values = self.values.gather(2, flat).view(b, h, q, k, self.dim)
        return keys, values, scores.masked_fill(~mask, 0.0), mask

    def search_slots(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """(scores, slot indices) (B, H, Q, k); for inspection (slot -> `position`)."""
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
        valid = self.valid()  # (B, M)
        best_scores, best_slots = None, None
        for start in range(0, self.capacity, self.search_chunk):  # bounded (Q x chunk) score blocks
            end = min(start + self.search_chunk, self.capacity)
            scores = queries.float() @ self.keys[:, :, start:end].float().transpose(-1, -2)  # (B, H, Q, chunk)
            scores = scores.masked_fill(~valid[:, None, None, start:end], float("-inf"))
            top = scores.topk(min(k, end - start), dim=-1)
            slots = top.indices + start
            if best_scores is None:
                best_scores, best_slots = top.values, slots
            else:
                merged = torch.cat([best_scores, top.values], -1).topk(k, dim=-1)
                best_slots = torch.cat([best_slots, slots], -1).gather(-1, merged.indices)
                best_scores = merged.values
        if best_scores.shape[-1] < k:  # capacity smaller than a chunk and k: pad
            pad = k - best_scores.shape[-1]
            best_scores = torch.nn.functional.pad(best_scores, (0, pad), value=float("-inf"))
            best_slots = torch.nn.functional.pad(best_slots, (0, pad), value=0)
        return best_scores, best_slots

    # ------------------------------------------------------------------ faiss backends
    def _new_index(self):
        import faiss

        if self.backend == "faiss-flat":
            base = faiss.IndexFlatIP(self.dim)
        elif self.backend == "faiss-hnsw":
            base = faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
            base.hnsw.efSearch = 512  # recall >= 0.9 on random unit vectors up to ~256K entries
            base.hnsw.efConstruction = 80
        else:  # faiss-ivf: trained lazily on the first vectors it sees
            quantizer = faiss.IndexFlatIP(self.dim)
            n_lists = max(1, int(self.capacity**0.5))
            base = faiss.IndexIVFFlat(quantizer, self.dim, n_lists, faiss.METRIC_INNER_PRODUCT)
            base.nprobe = max(1, n_lists // 4)  # a quarter of the lists: high recall at ~4x less work
            self._keepalive.append(quantizer)  # faiss does not own the quantizer
        return faiss.IndexIDMap2(base) if self.backend != "faiss-flat" else faiss.IndexIDMap(base)

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
        return {name: getattr(self, name).clone() for name in ("keys", "values", "position", "added", "live_from")}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, value in state.items():
            if getattr(self, name).shape != value.shape:
                raise ValueError(
                    f"kNN memory {name} has shape {tuple(value.shape)}, expected {tuple(getattr(self, name).shape)}"
                )
            setattr(self, name, value.to(getattr(self, name).device).clone())
        self._faiss = None  # rebuilt lazily from the restored entries

    def save(self, path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in self.state_dict().items()}, str(path))

    def load(self, path) -> None:
        from safetensors.torch import load_file

        self.load_state_dict(load_file(str(path)))
