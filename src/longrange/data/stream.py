"""Document streams: B rows, each walking its own documents segment by segment.

Every step yields a `Batch` of ``tokens (B, T)``, ``targets (B, T)`` and ``doc_start (B,)``:

- global row g of B reads documents ``docs[g::B]`` (in an order shuffled per epoch by seed); with
  ``world_size`` ranks, rank r owns the rows ``[r * B/W, (r + 1) * B/W)``, so each rank reads its own
  documents and W ranks together see exactly what one process with batch B sees;
- a document d of n bytes gives inputs ``d[:-1]`` and targets ``d[1:]`` cut into segments of T, so
  every byte but the first of each document is a target exactly once per epoch (the first byte
  has no context inside its document and is only an input);
- the last segment of a document is padded (token 0, target -100) so the next document starts a
  new segment and ``doc_start`` is a per-row flag, as in the Memorizing Transformer batching;
- with ``loop=False`` a row that has finished its documents yields padding until every row is done.

`state_dict()` holds the per-row cursors, so a resumed stream continues exactly where it stopped.

Documents are a list of ``bytes`` (byte tokens) or a `TokenDocuments` (token arrays, possibly memory-mapped
from a token store larger than RAM): rows hold document indices and lengths come from the offsets, so a
step reads only the ``T + 1`` tokens of each row's segment, never a whole document or corpus.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from longrange.data.token_store import TokenDocuments

PAD_TOKEN = 0
IGNORE_INDEX = -100


class Batch(NamedTuple):
    tokens: Tensor  # (B, T) int64
    targets: Tensor  # (B, T) int64, IGNORE_INDEX on padding
    doc_start: Tensor  # (B,) bool: this row's segment starts a new document


class DocumentStream:
    def __init__(
        self,
        documents: list[bytes] | TokenDocuments,
        batch_size: int,
        segment_len: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        loop: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size < 1 or segment_len < 1:
            raise ValueError(f"batch_size={batch_size} and segment_len={segment_len} must be >= 1")
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} must be a multiple of the number of ranks ({world_size})")
        self.documents = documents if isinstance(documents, TokenDocuments) else list(documents)
        lengths = documents.lengths() if isinstance(documents, TokenDocuments) else [len(d) for d in self.documents]
        self.lengths = np.asarray(lengths, dtype=np.int64)  # tokens per document
        keep = np.flatnonzero(self.lengths >= 2)  # a document needs an input and a target
        local = batch_size // world_size  # rows of this rank
        self.rows = [keep[g::batch_size] for g in range(rank * local, (rank + 1) * local)]  # document indices
        if loop and any(not len(row) for row in self.rows):
            raise ValueError(
                f"{len(keep)} documents cannot feed {batch_size} rows; "
                "use a smaller batch_size or a corpus with more documents"
            )
        self.batch_size, self.segment_len = local, segment_len
        self.seed, self.shuffle, self.loop = seed, shuffle, loop
        self.cursor = [{"epoch": 0, "index": 0, "offset": 0} for _ in range(local)]  # per row of this rank

    # -------------------------------------------------------------- resumable position
    def state_dict(self) -> dict:
        return {"cursor": [dict(c) for c in self.cursor]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["cursor"]) != self.batch_size:
            raise ValueError(f"stream state is for {len(state['cursor'])} rows, this stream has {self.batch_size}")
        self.cursor = [dict(c) for c in state["cursor"]]

    # -------------------------------------------------------------- iteration
    def _order(self, row: int, epoch: int) -> list[int]:
        n = len(self.rows[row])
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng([self.seed, row, epoch]).permutation(n).tolist()

    def _row_segment(self, row: int) -> tuple[np.ndarray, np.ndarray, bool]:
        t, c = self.segment_len, self.cursor[row]
        tokens = np.full(t, PAD_TOKEN, dtype=np.int64)
        targets = np.full(t, IGNORE_INDEX, dtype=np.int64)
        if c["index"] >= len(self.rows[row]):  # finished (loop=False): padding only
            return tokens, targets, False
        index = int(self.rows[row][self._order(row, c["epoch"])[c["index"]]])
        start, length = c["offset"], int(self.lengths[index])
        piece = self._piece(index, start, min(t + 1, length - start))
        n = len(piece) - 1
        tokens[:n], targets[:n] = piece[:-1], piece[1:]
        c["offset"] += n
        if c["offset"] >= length - 1:  # document done: next segment starts the next one
            c["index"], c["offset"] = c["index"] + 1, 0
            if c["index"] >= len(self.rows[row]) and self.loop:
                c["epoch"], c["index"] = c["epoch"] + 1, 0
        return tokens, targets, start == 0

    def _piece(self, index: int, start: int, count: int) -> np.ndarray:
        """Tokens [start, start + count) of document `index`, copied out of a memory map (a page or two)."""
        doc = self.documents[index]
        if isinstance(doc, bytes | bytearray):
            return np.frombuffer(doc, dtype=np.uint8, count=count, offset=start)
        return np.asarray(doc[start : start + count])

    def segments_per_row(self) -> list[int]:
        """Segments each row of a non-looping stream yields (its documents' ceil((n - 1) / T), summed)."""
        t = self.segment_len
        return [int((-(-(self.lengths[row] - 1) // t)).sum()) for row in self.rows]

    def done(self) -> bool:
        return not self.loop and all(c["index"] >= len(r) for c, r in zip(self.cursor, self.rows, strict=True))

    def __iter__(self) -> Iterator[Batch]:
        while not self.done():
            yield self.next_batch()

    def next_batch(self) -> Batch:
        rows = [self._row_segment(b) for b in range(self.batch_size)]
        tokens = torch.from_numpy(np.stack([r[0] for r in rows]))
        targets = torch.from_numpy(np.stack([r[1] for r in rows]))
        doc_start = torch.tensor([r[2] for r in rows], dtype=torch.bool, device="cpu")  # batches are made on the host
        return Batch(tokens, targets, doc_start)
