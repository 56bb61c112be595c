"""`KNNMemory`: the Memorizing Transformer's external, non-differentiable (key, value) store.

Shape legend: B batch rows (one document each), H heads, M capacity per row, N entries added,
Q queries, k neighbours, E head width.

One partition per (row, head), as in the paper and meliad (each head retrieves from its own
memory). Each row is a FIFO ring buffer of capacity M: when full, the *oldest* entries are
overwritten one by one (never the whole memory; the public port resets its index on overflow).
``reset(rows)`` empties exactly those rows (a new document). Entries are stored detached, so no
gradient ever reaches the memory. Keys are stored as given; the kNN attention layer L2-normalises
keys and queries before adding and searching, as in the paper. ``add(..., valid=mask)`` marks
padded entries: they take their ring slots (rows stay in step) but are never found.

Device and dtype: the store lives on the model's device in the model's dtype (``dtype``); queries
and entries of another dtype are converted on the way in, results are returned in the queries'
dtype. With ``adopt_bf16`` (what the kNN layer asks of a float32 model's store) an empty store becomes a
bfloat16 one when the first entries added, or the state loaded, are bfloat16: a run under bf16 autocast
keeps its memory in bf16 (half the bytes, bf16 matrix products to search it; the entries were bf16 already,
so nothing is lost by storing them so). The exact search runs on that device (GPU, CPU, or the meta device)
without synchronising with the host: the counters a search needs (entries ever added, whether some slot may
be stale) are mirrored in Python, so ``add``/``search``/``reset`` never read a tensor value back.

Search in 16 bits (a bfloat16 or float16 store over more than 4 `_candidates(k)` groups of slots; smaller ones
are scored in float32 outright): the scores are matrix products in the store's dtype (on CPUs with AMX, bf16
products run about 6x faster than fp32 ones), accumulated in float32 but rounded to 8 (bf16) or 11 (fp16)
significant bits. Near a score of 0.5, bf16 cannot tell apart scores within 0.004, and the keys of a trained
model crowd there: on keys of a small memorizing model (d 128, 2 heads of 64) a query's k-th best score shared
its bf16 value with a median of 34 and up to 1,569 slots of 65,536, and a top 32 taken on bf16 scores agreed
with the float32 one on 93% of its slots. Two measures make the search agree with float32 (module tests):
- the scan scores s - c, c a score near the query's k-th best found by a pilot search of a sixteenth of the
  memory, summed in float32 before the one rounding (`baddbmm` adds the offset to the float32 accumulator), so
  scores near the boundary are rounded at the scale of their distance to c (0.0005 at most, measured, for
  scores 0.2 from c; 0.00003 within 0.01 of c) instead of 0.002;
- it keeps `_candidates(k)` (2k, at least k + 32) candidates by those scores, recomputes theirs in float32 from
  the stored entries (a gather of the candidates' keys) and takes the top k of those: the returned scores are
  float32 accurate.

Backends:
- ``exact``: torch matmul + top-k, chunked over the memory so a million entries fit, pruned by group
  maxima (exact: see `KNNMemory._exact_topk`) (the oracle);
- ``faiss-flat``: faiss ``IndexFlatIP`` per (row, head) (exact, same results as ``exact``);
- ``faiss-hnsw`` / ``faiss-ivf``: approximate indexes (settings below, chosen with ``longrange bench knn``).
faiss indexes hold the ring buffer's entries under ids = insertion number; an id is live while it
is among the newest M of its row (and after the row's last reset). Searches ask faiss for enough
extra neighbours to skip stale ids, and an index is rebuilt from the live entries once stale ones
outnumber live ones, so FIFO eviction and per-row reset hold for every backend. faiss runs on the
CPU: queries go there and results come back to the store's device (a host round trip by nature).

Storage: ``"memory"`` keeps keys and values in RAM (or on the GPU); ``"disk"`` keeps them in two
memory-mapped files (numpy ``memmap`` viewed as torch tensors), so a memory larger than RAM pages
in and out as searched. Both run the same code on the same tensors, so results are identical.
The files live in a fresh folder inside a per-process folder ``knn-memory-<host>-<pid>-<start>``
under ``directory`` (the trainer passes one, e.g. inside the run folder; default the system
temporary folder). They are deleted when the store is garbage-collected; after a crash, the next
store made under the same ``directory`` on the same host removes the folders of processes that
are no longer running (`reclaim_stale`). Positions and counters stay in RAM.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import stat
import tempfile
import weakref
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

BACKENDS = ("exact", "faiss-flat", "faiss-hnsw", "faiss-ivf")
STORAGES = ("memory", "disk")
PREFIX = "knn-memory-"
# numpy types of the memory-mapped files; bfloat16 has none, so its 2-byte words are stored as int16 and viewed back
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16, torch.bfloat16: np.int16}

_SUFFIX = {torch.float32: "f32", torch.float64: "f64", torch.float16: "f16", torch.bfloat16: "bf16"}

log = logging.getLogger(__name__)

# exact search (see `KNNMemory._exact_topk`): slots per group, queries per block, score-block sizes in floats
# (8 MB on a CPU: a block that stays in cache; 64 MB on an accelerator, like the search before grouping)
_GROUP = 16
_QUERY_BLOCK = 64
_CPU_SCORE_FLOATS = 1 << 21
_SCORE_FLOATS = 1 << 24
_CANDIDATE_FLOATS = 1 << 23  # kept groups' scores held before they are merged (32 MB)
_LOW_PRECISION = (torch.bfloat16, torch.float16)  # stores whose search rescores its candidates in float32


def _candidates(k: int) -> int:
    """Candidates a 16-bit store's search keeps by its rounded scores before rescoring them (module docstring)."""
    return max(2 * k, k + 32)


def _start_time(pid: int) -> str:
    """The start time of process `pid` (Linux: field 22 of /proc/PID/stat), so a reused pid is not taken for
    the process that made a folder; "0" where it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return "0"


def _process_folder_name(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    host = socket.gethostname().replace("-", "_") or "host"
    return f"{PREFIX}{host}-{pid}-{_start_time(pid)}"


def _alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return start == "0" or _start_time(pid) in (start, "0")


def reclaim_stale(directory: str | Path) -> list[Path]:
    """Remove the per-process folders under `directory` left by dead processes of this host and user (a
    crash skips the store's own clean-up); returns the folders removed. Folders of live processes, of other
    hosts (a shared file system), of other users, and symbolic links are left alone."""
    root, removed = Path(directory), []
    host = socket.gethostname().replace("-", "_") or "host"
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        parts = entry.name[len(PREFIX) :].rsplit("-", 2)
        if not entry.name.startswith(PREFIX) or len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        try:
            info = os.lstat(entry)
        except OSError:
            continue
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or _alive(int(parts[1]), parts[2]):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        log.info("removed the kNN memory files of a process that is no longer running: %s", entry)
        removed.append(entry)
    return removed


class KNNMemory:
    def __init__(
        self,
        batch_size: int,
        capacity: int,
        n_heads: int,
        dim: int,
        backend: str = "exact",
        device: torch.device | str | None = None,
        search_chunk: int = 65536,
        storage: str = "memory",
        directory: str | Path | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        ivf_lists: int | None = None,
        ivf_probe: int | None = None,
        dtype: torch.dtype = torch.float32,
        adopt_bf16: bool = False,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"knn.backend={backend!r} is not one of {list(BACKENDS)}")
        if storage not in STORAGES:
            raise ValueError(f"knn.storage={storage!r} is not one of {list(STORAGES)}")
        if device is None:  # like torch's factories: the default device (disk storage: the CPU, where files map)
            device = torch.device("cpu") if storage == "disk" else torch.get_default_device()
        if storage == "disk" and torch.device(device).type != "cpu":
            raise ValueError(f"knn.storage='disk' maps files into CPU memory; use device 'cpu', not {device!r}")
        if capacity < 1:
            raise ValueError(f"knn.memory_size={capacity} must be >= 1")
        if dtype not in _NUMPY:
            raise ValueError(f"a kNN memory holds floating-point entries ({list(_NUMPY)}), not {dtype}")
        self.batch_size, self.capacity, self.n_heads, self.dim = batch_size, capacity, n_heads, dim
        self.backend, self.search_chunk, self.storage, self.dtype = backend, search_chunk, storage, dtype
        # an empty store turns bf16 when bf16 entries arrive (module docstring); faiss indexes hold float32 only
        self.adopt_bf16 = adopt_bf16 and backend == "exact"
        # approximate-index settings (see `longrange bench knn` for the recall/speed they give)
        self.hnsw_m, self.ef_construction, self.ef_search = hnsw_m, ef_construction, ef_search
        self.ivf_lists = ivf_lists or max(1, 4 * int(capacity**0.5))  # faiss guideline: 4 sqrt(N) lists
        self.ivf_probe = ivf_probe or max(4, self.ivf_lists // 128)  # ~1% of the lists (tuned on clustered keys)
        self.directory = None
        if storage == "disk":
            root = Path(directory if directory is not None else tempfile.gettempdir())
            root.mkdir(parents=True, exist_ok=True)
            reclaim_stale(root)
            mine = root / _process_folder_name()
            mine.mkdir(mode=0o700, exist_ok=True)
            self.directory = Path(tempfile.mkdtemp(prefix="store-", dir=mine))
            weakref.finalize(self, _remove_store_folder, str(self.directory))
        shape = (batch_size, n_heads, capacity, dim)
        self.keys = self._allocate("keys", shape, device)  # (B, H, M, E)
        self.values = self._allocate("values", shape, device)  # (B, H, M, E)
        self.position = torch.full((batch_size, capacity), -1, dtype=torch.long, device=device)  # token index
        self.real = torch.ones(batch_size, capacity, dtype=torch.bool, device=device)  # False: a padded entry
        self.added = torch.zeros(batch_size, dtype=torch.long, device=device)  # entries ever added (per row)
        self.live_from = torch.zeros(batch_size, dtype=torch.long, device=device)  # first id after last reset
        # host mirrors of the counters (no device read-back in add/search): the rows' common `added` (None when
        # rows differ, after loading such a state), the largest `added`, and until which `added` some written
        # slot may be stale (reset rows, padded entries), so the search must apply the live mask
        self._added_host: int | None = 0
        self._max_added_host = 0
        self._stale_until = 0
        self._faiss: list[list] | None = None  # [row][head] -> faiss index (faiss backends)
        self._keepalive: list = []

    def _allocate(self, name: str, shape: tuple[int, ...], device) -> Tensor:
        if self.storage == "memory":
            # Not zero-filled: nothing reads a slot before it is written (the exact search scans written slots
            # only, faiss indexes hold written ones, `valid()` masks the rest) except slot 0, which a search of an
            # empty row gathers as its placeholder (masked, weighted 0: it must be finite, so it is zeroed).
            # Zeroing all M slots cost a memory of M = 64K at d 512 about 0.3 s per store made (a training step
            # that empties its memory makes one per kNN layer); `state_dict` zeroes the unwritten slots instead.
            table = torch.empty(shape, device=device, dtype=self.dtype)
            table[:, :, :1].zero_()
            return table
        file = self.directory / f"{name}.{_SUFFIX[self.dtype]}"
        array = np.memmap(file, dtype=_NUMPY[self.dtype], mode="w+", shape=shape)  # zero-filled
        return torch.from_numpy(array).view(self.dtype)  # shares the mapping: writes go to the file

    def _adopt(self, dtype: torch.dtype) -> None:
        """Hold keys and values in `dtype` from now on, when this store adopts it (`adopt_bf16`) and is empty.

        Decided on the host (a dtype, a host-side counter): no device read. A disk store's files are made anew."""
        if not self.adopt_bf16 or dtype != torch.bfloat16 or self.dtype == dtype or not self.never_written:
            return
        old, device, shape = self.dtype, self.keys.device, tuple(self.keys.shape)
        self.keys = self.values = None  # the old tables go before the new ones are made
        self.dtype = dtype
        if self.storage == "disk":
            for name in ("keys", "values"):
                (self.directory / f"{name}.{_SUFFIX[old]}").unlink(missing_ok=True)
        self.keys = self._allocate("keys", shape, device)
        self.values = self._allocate("values", shape, device)

    # ------------------------------------------------------------------ bookkeeping
    @property
    def count(self) -> Tensor:
        """(B,) live entries per row (padded entries not counted)."""
        return self.valid().sum(1)

    @property
    def never_written(self) -> bool:
        """True while nothing was ever added (known on the host: no device read)."""
        return self._max_added_host == 0

    def valid(self) -> Tensor:
        """(B, M) bool: slots holding a live, real entry."""
        slot_id = self._slot_ids()
        live = (slot_id >= self.live_from[:, None]) & (slot_id >= self.added[:, None] - self.capacity)
        return live & (slot_id >= 0) & self.real

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
        for name in ("keys", "values", "position", "real", "added", "live_from"):
            setattr(self, name, getattr(self, name).to(device))
        return self

    # ------------------------------------------------------------------ the three operations
    @torch.no_grad()
    def add(self, keys: Tensor, values: Tensor, positions: Tensor | None = None, valid: Tensor | None = None) -> None:
        """Append keys/values (B, H, N, E) to every row (oldest entries evicted at capacity).

        ``positions`` (B, N) are the tokens' indices in their documents (kept for inspection); ``valid`` (B, N)
        bool marks real entries (False: padding, stored in its slot but never found; default all real).
        """
        b, h, n, e = keys.shape
        if (b, h, e) != (self.batch_size, self.n_heads, self.dim) or values.shape != keys.shape:
            expected = (self.batch_size, self.n_heads, "N", self.dim)
            raise ValueError(
                f"keys {tuple(keys.shape)} / values {tuple(values.shape)} do not fit a memory of shape {expected}"
            )
        self._adopt(keys.dtype)  # an empty bf16-adopting store meeting bf16 entries (a bf16 autocast run)
        keys, values = keys.to(self.keys.device, self.dtype), values.to(self.keys.device, self.dtype)
        if positions is None:
            positions = torch.full((b, n), -1, dtype=torch.long, device=keys.device)
        real = torch.ones(b, n, dtype=torch.bool, device=keys.device) if valid is None else valid.to(keys.device)
        if n > self.capacity:  # only the newest M can survive
            keys, values, positions, real = (
                keys[:, :, -self.capacity :],
                values[:, :, -self.capacity :],
                positions[:, -self.capacity :],
                real[:, -self.capacity :],
            )
            self.added += n - self.capacity
            self._advance(n - self.capacity)
            n = self.capacity
        first_id = self.added.clone()
        if self._added_host is not None:  # rows in step (always, unless loaded otherwise): <= 2 slices
            start = self._added_host % self.capacity
            head = min(n, self.capacity - start)  # up to the end of the ring, the rest wraps to slot 0
            self._write(start, 0, head, keys, values, positions, real)
            if head < n:
                self._write(0, head, n - head, keys, values, positions, real)
        else:
            slot = (first_id[:, None] + torch.arange(n, device=keys.device)) % self.capacity  # (B, N)
            index = slot[:, None, :, None].expand(b, h, n, e)
            self.keys.scatter_(2, index, keys)
            self.values.scatter_(2, index, values)
            self.position.scatter_(1, slot, positions)
            self.real.scatter_(1, slot, real)
        self.added += n
        self._advance(n)
        if valid is not None:  # padded entries are stale slots until overwritten
            self._mark_stale()
        if self._faiss is not None:
            self._faiss_add(keys, first_id, real)

    def _advance(self, n: int) -> None:
        self._max_added_host += n
        if self._added_host is not None:
            self._added_host += n

    def _mark_stale(self) -> None:
        """Some written slot may now be stale (a reset, padding): searches mask by `valid()` until every slot
        has been overwritten since (M more entries in every row)."""
        self._stale_until = self._max_added_host + self.capacity

    def _write(
        self, slot: int, offset: int, n: int, keys: Tensor, values: Tensor, positions: Tensor, real: Tensor
    ) -> None:
        """Copy entries offset .. offset + n of the new keys/values/positions into slots slot .. slot + n."""
        self.keys[:, :, slot : slot + n] = keys[:, :, offset : offset + n]
        self.values[:, :, slot : slot + n] = values[:, :, offset : offset + n]
        self.position[:, slot : slot + n] = positions[:, offset : offset + n]
        self.real[:, slot : slot + n] = real[:, offset : offset + n]

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
        out = queries.dtype  # results in the queries' dtype (an fp16/bf16 layer over a float32 store, say)
        return keys.to(out), values.to(out), scores.masked_fill(~mask, 0.0).to(out), mask

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
        self._mark_stale()  # whether any row was reset is not read back from the device
        if self._faiss is not None:
            for r in torch.nonzero(rows).flatten().tolist():
                self._faiss[r] = [self._new_index() for _ in range(self.n_heads)]

    # ------------------------------------------------------------------ exact backend
    def _exact_topk(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """Exact top-k over the written slots: the k largest scores, as one `topk` over all of them would give.

        Only written slots are scanned; the live mask is applied only when some written slot is stale (after a
        reset or padding). A memory of at most 4k groups of slots takes one matmul and one `topk` (grouping
        would keep too much of it to pay); a larger one the chunked, grouped scan of `_grouped_topk`. A 16-bit
        store searches for `_candidates(k)` by its rounded scores and keeps the k best of their float32 scores
        (`_rescore`; see the module docstring); its scores are returned in float32.
        """
        b, h, q, e = queries.shape
        device = self.keys.device
        low = self.dtype in _LOW_PRECISION
        used = min(self._max_added_host, self.capacity)  # slots >= used were never written
        if used == 0:
            empty = torch.full((b, h, q, k), float("-inf"), device=device, dtype=torch.float32 if low else self.dtype)
            return empty, torch.zeros((b, h, q, k), dtype=torch.long, device=device)
        rows = b * h
        keys = self.keys.view(rows, self.capacity, e)[:, :used]  # (B*H, used, E)
        exact_queries = queries.to(device, torch.float32).reshape(rows, q, e) if low else None
        queries = queries.to(device, self.dtype).reshape(rows, q, e)
        stale = None  # (B*H, used) bool: slots to score -inf
        if self._added_host is None or self._max_added_host < self._stale_until:
            stale = (~self.valid()[:, None, :used]).expand(b, h, used).reshape(rows, used)
        wanted = _candidates(k) if low else k
        if used <= 4 * wanted * _GROUP:
            if low:  # a small memory: float32 scores outright, exact (16 bits pay on large memories)
                keys, queries, low = keys.float(), exact_queries, False
            every = torch.matmul(queries, keys.transpose(1, 2))  # (B*H, Q, used)
            if stale is not None:
                every.masked_fill_(stale[:, None], float("-inf"))
            best = every.topk(min(k, used), dim=-1)
            scores, slots = best.values, best.indices
        elif used <= 16 * wanted * _GROUP or rows == 1:
            scores, slots = self._grouped_topk(keys, queries, stale, wanted)
        else:
            # a memory larger than the smallest chunk: one (row, head) at a time, so each call's chunks grow to the
            # cache budget; all 32 rows of a batch of 4 x 8 heads at once searched 65K slots in 2.23 s, row by row
            # in 1.55 s (at 8K slots and below the two ways are within 10%, and all rows at once is kept)
            found = [
                self._grouped_topk(
                    keys[r : r + 1], queries[r : r + 1], None if stale is None else stale[r : r + 1], wanted
                )
                for r in range(rows)
            ]
            scores, slots = (torch.cat(parts) for parts in zip(*found, strict=True))
        if low:
            scores, slots = self._rescore(exact_queries, scores, slots, k)
        missing = k - scores.shape[-1]  # fewer than k slots written: the rest is -inf (slot 0)
        scores = torch.nn.functional.pad(scores, (0, missing), value=float("-inf")).view(b, h, q, k)
        return scores, torch.nn.functional.pad(slots, (0, missing)).view(b, h, q, k)

    def _score_offsets(self, keys: Tensor, queries: Tensor, stale: Tensor | None, k: int) -> Tensor:
        """(R, 1, Q) in the store's dtype: minus each query's k-th best score over the first sixteenth of the slots
        (at least k groups), a score a little below its k-th best over all of them (0 where that prefix holds
        fewer than k live slots). A pilot search of that prefix: about 6% of a large memory's search."""
        rows, used, _ = keys.shape
        head = min(used, -(-max(used // 16, k * _GROUP) // _GROUP) * _GROUP)
        zero = torch.zeros((rows, 1, queries.shape[1]), device=keys.device, dtype=keys.dtype)
        prefix = None if stale is None else stale[:, :head]
        pilot, _ = self._grouped_topk(keys[:, :head], queries, prefix, min(k, head), offset=zero)
        kth = pilot[..., -1]  # (R, Q)
        return torch.where(torch.isfinite(kth), -kth, 0.0).unsqueeze(1)

    def _rescore(self, queries: Tensor, scores: Tensor, slots: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """The k best (R, Q, k) of a 16-bit store's candidates, ``scores`` and ``slots`` (R, Q, c) found by rounded
        scores, by their scores recomputed in float32: float32 queries (R, Q, E) against the stored keys of the
        candidates (exact in float32). Candidates scored -inf (stale slots, padding) stay -inf."""
        rows, q, c = slots.shape
        offsets = torch.arange(rows, device=slots.device).view(rows, 1, 1) * self.capacity
        flat = (slots + offsets).view(-1)  # into the (B * H * M, E) view
        candidates = self.keys.view(-1, self.dim).index_select(0, flat).view(rows, q, c, self.dim)
        exact = torch.matmul(candidates.float(), queries.unsqueeze(-1)).squeeze(-1)  # (R, Q, c)
        exact.masked_fill_(scores == float("-inf"), float("-inf"))
        best = exact.topk(min(k, c), dim=-1)
        return best.values, slots.gather(-1, best.indices)

    def _grouped_topk(
        self, keys: Tensor, queries: Tensor, stale: Tensor | None, k: int, offset: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Top-k scores and slots (R, Q, k) of queries (R, Q, E) over keys (R, N, E) (R = B*H rows, N written
        slots; ``stale`` (R, N) marks slots to score -inf), by chunked matmul and pruning by group maxima.

        Shape legend: C slots per chunk, G = C / g groups of g slots per chunk, w queries per block, S groups
        held per query.

        A chunk of C slots is scored against a block of w queries as keys @ queries^T into one reused (R, C, w)
        buffer small enough to stay in a CPU's cache (writing a million-slot search's scores out to memory and
        back cost as much as the matmul). A `topk` over every score cost about as much again, so each chunk is
        cut into G groups of g consecutive slots and only the k groups with the largest maxima (`amax`, a cheap
        reduction) are kept, with their scores; the groups kept from successive chunks are merged the same way,
        and a last `topk` over the groups held gives the result.

        Why exact. Let t be a query's k-th largest score (NaN ranks largest, as in `topk`). In a chunk fewer
        than k groups have a maximum > t (each holds its own score > t), so the k groups with the largest maxima
        include all of them, and either are k groups with maxima >= t (so hold k scores >= t) or include every
        group with a maximum >= t (so every score >= t of the chunk). The kept groups thus hold every score > t
        and at least k scores >= t: their k largest are the k largest scores (the same slots, up to ties). A
        merge keeps, by the same argument, the k largest scores of the groups it merges.
        The `topk` ranks a group by max(maximum, tau), tau being the largest k-th group maximum of the chunks
        before, so that the many groups below tau tie and the selection runs fast. tau <= t (k groups, so k
        scores, are >= tau). While tau < t, ranking by max(maximum, tau) moves no maximum across t and the
        argument holds; the chunk that raised tau to t kept k groups with maxima >= t (its tau being < t).

        A 16-bit store scores s - c instead of s, c being a score near each query's k-th best (``offset`` (R, 1, Q)
        holds -c; by default `_score_offsets` finds it): the product and the offset are summed in float32 before
        the one rounding to 16 bits (`baddbmm`), so the scores near the boundary of the top k are rounded at the
        scale of their distance to c, not of their size. Subtracting c changes no ranking, so the argument above
        holds; the scores returned are s - c (`_rescore` recomputes them).
        """
        (rows, used, _), q, g = keys.shape, queries.shape[1], _GROUP
        device, dtype = keys.device, keys.dtype
        if offset is None and dtype in _LOW_PRECISION:
            offset = self._score_offsets(keys, queries, stale, k)
        # Query blocks of 64 and chunks of C slots, so that a (R, C, w) score block stays in a CPU's cache;
        # elsewhere larger blocks mean fewer launches. A chunk holds at least 16k groups, else too many scores
        # are kept (and gathered) for the pruning to pay, and at most the written slots, up to a whole group.
        width = min(q, _QUERY_BLOCK)
        budget = _CPU_SCORE_FLOATS if device.type == "cpu" else _SCORE_FLOATS
        chunk = min(max(budget // (rows * width), 16 * k * g), self.search_chunk, -(-used // g) * g)
        chunk = max(g, chunk // g * g)
        n_groups = chunk // g
        kept = min(k, n_groups)  # groups kept per chunk (all of them when a chunk has fewer than k)
        n_chunks = -(-used // chunk)
        # candidates (R, Q, S, g): the groups kept by up to `per_merge` chunks, after the k best groups of the
        # chunks before them when there are more chunks than that (`_keep_best_groups` merges them)
        per_merge = max(1, min(n_chunks, _CANDIDATE_FLOATS // (rows * q * kept * g)))
        merged = k if n_chunks > per_merge else 0
        candidates = torch.full((rows, q, merged + per_merge * kept, g), float("-inf"), device=device, dtype=dtype)
        group_ids = torch.zeros(candidates.shape[:-1], dtype=torch.long, device=device)  # group number = slot // g
        tau = torch.full((rows, 1, q), float("-inf"), device=device, dtype=dtype)
        buffer = torch.empty(rows * chunk * width, device=device, dtype=dtype)
        blocks = []  # per block of queries: its first query, queries^T (R, E, w), where its groups' scores sit
        for a in range(0, q, width):
            block_t = queries[:, a : a + width].transpose(1, 2).contiguous()
            w = block_t.shape[-1]
            r = torch.arange(rows, device=device).view(rows, 1, 1, 1)
            i = torch.arange(w, device=device).view(1, w, 1, 1)
            o = torch.arange(g, device=device).view(1, 1, 1, g)
            at = r * (chunk * w) + o * w + i  # (R, w, 1, g): buffer position of (row r, slot o of group 0, query i)
            blocks.append((a, block_t, at))
        for index, start in enumerate(range(0, used, chunk)):
            end = min(start + chunk, used)
            into = merged + (index % per_merge) * kept  # where this chunk's groups go in `candidates`
            for a, block_t, at in blocks:
                w = block_t.shape[-1]
                block = buffer[: rows * chunk * w].view(rows, chunk, w)
                if offset is not None:  # 16 bits: s - c, summed in float32 and rounded once
                    if end - start == chunk:
                        torch.baddbmm(offset[..., a : a + w], keys[:, start:end], block_t, out=block)
                    else:
                        block[:, : end - start] = torch.baddbmm(offset[..., a : a + w], keys[:, start:end], block_t)
                        block[:, end - start :] = float("-inf")
                elif end - start == chunk:
                    torch.matmul(keys[:, start:end], block_t, out=block)
                else:  # the last chunk: scores, then -inf up to a whole chunk
                    block[:, : end - start] = torch.matmul(keys[:, start:end], block_t)
                    block[:, end - start :] = float("-inf")
                if stale is not None:
                    block[:, : end - start].masked_fill_(stale[:, start:end, None], float("-inf"))
                maxima = block.view(rows, n_groups, g, w).amax(2)  # (R, G, w)
                if kept == k:  # rank by max(maximum, tau); tau moves to this chunk's k-th maximum if larger
                    clamp = tau[..., a : a + w]
                    torch.maximum(maxima, clamp, out=maxima)
                top = maxima.topk(kept, dim=1)  # (R, kept, w)
                if kept == k:
                    clamp.copy_(torch.fmax(clamp, top.values[:, -1:]))  # fmax: a NaN maximum never becomes tau
                picks = top.indices.transpose(1, 2)  # (R, w, kept)
                # the kept groups' scores (R, w, kept, g) (index_select on the flat buffer ran 2x faster than gather)
                where = torch.add(at, picks.unsqueeze(-1), alpha=g * w)
                picked = buffer.index_select(0, where.reshape(-1)).view(where.shape)
                candidates[:, a : a + w, into : into + kept] = picked
                group_ids[:, a : a + w, into : into + kept] = picks + start // g
            if index % per_merge == per_merge - 1 and end < used:
                _keep_best_groups(candidates, group_ids, k)
        best = candidates.flatten(2).topk(min(k, candidates.shape[2] * g), dim=-1)  # among all groups held
        slots = group_ids.gather(2, best.indices // g) * g + best.indices % g
        # a -inf result (fewer than k live slots) may point past the written slots, into the last chunk's padding
        return best.values, slots.clamp_(max=used - 1)

    # ------------------------------------------------------------------ faiss backends
    def _new_index(self):
        import faiss  # loaded only when a faiss backend is used (the exact one needs none)

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
        import faiss  # loaded only when a faiss backend is used (the exact one needs none)

        index = self._faiss[r][h]
        x = np.ascontiguousarray(keys.detach().float().cpu().numpy())
        base = faiss.downcast_index(index.index)
        if not base.is_trained:  # IVF: learn the coarse clusters from the first entries
            base.train(x if x.shape[0] >= base.nlist else np.repeat(x, -(-base.nlist // x.shape[0]), axis=0))
        index.add_with_ids(x, np.ascontiguousarray(ids.cpu().numpy().astype(np.int64)))

    def _faiss_add(self, keys: Tensor, first_id: Tensor, real: Tensor) -> None:
        n = keys.shape[2]
        real = real.cpu()
        for r in range(self.batch_size):
            ids = (first_id[r].cpu() + torch.arange(n))[real[r]]  # padded entries never enter an index
            for h in range(self.n_heads):
                self._index_add(r, h, keys[r, h][real[r].to(keys.device)], ids)
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
        scores = torch.full((b, h, q, k), float("-inf"), dtype=self.dtype)  # on the CPU, where faiss works
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
        return scores.to(self.keys.device), slots.to(self.keys.device)

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Tensor]:
        """Copies of the store's tensors; with disk storage, keys and values are the mapped files
        themselves (not copied into RAM): write them out before the next `add`, as checkpoints do."""
        names = ("keys", "values", "position", "real", "added", "live_from")
        mapped = ("keys", "values") if self.storage == "disk" else ()
        if self.storage == "memory":  # slots never written hold whatever the allocation held: save them as zeros
            used = min(self._max_added_host, self.capacity)
            self.keys[:, :, max(used, 1) :].zero_()
            self.values[:, :, max(used, 1) :].zero_()
        return {name: getattr(self, name) if name in mapped else getattr(self, name).clone() for name in names}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "keys" in state:
            self._adopt(state["keys"].dtype)  # a bf16 run's memory resumes in bf16 (its searches unchanged)
        for name, value in state.items():
            current = getattr(self, name)
            if current.shape != value.shape:
                raise ValueError(f"kNN memory {name} has shape {tuple(value.shape)}, expected {tuple(current.shape)}")
            current.copy_(value)  # in place: a disk memory keeps its files (and converts to its dtype)
        self._faiss = None  # rebuilt lazily from the restored entries
        # the host mirrors, read back once here (loading is not a forward pass)
        added = self.added.cpu()
        self._added_host = int(added[0]) if bool((added == added[0]).all()) else None
        self._max_added_host = int(added.max())
        self._mark_stale()  # loaded rows may hold reset or padded slots

    def save(self, path) -> None:
        save_file({k: v.contiguous().cpu() for k, v in self.state_dict().items()}, str(path))

    def load(self, path) -> None:
        self.load_state_dict(load_file(str(path)))


def _keep_best_groups(candidates: Tensor, group_ids: Tensor, k: int) -> None:
    """Move the k groups with the largest maxima of each query to the front of ``candidates`` (R, Q, S, g) and
    ``group_ids`` (R, Q, S), and empty the rest (-inf), so that later chunks do not meet them twice."""
    top = candidates.amax(-1).topk(k, dim=-1).indices  # (R, Q, k)
    best = candidates.gather(2, top.unsqueeze(-1).expand(-1, -1, -1, candidates.shape[-1]))
    ids = group_ids.gather(2, top)
    candidates[:, :, :k] = best
    candidates[:, :, k:] = float("-inf")
    group_ids[:, :, :k] = ids


def _remove_store_folder(folder: str) -> None:
    """Delete a store's files, and its process folder once no other store of this process uses it."""
    shutil.rmtree(folder, ignore_errors=True)
    try:
        os.rmdir(Path(folder).parent)  # fails (and is left) while another store's folder is inside
    except OSError:
        pass
