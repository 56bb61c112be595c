"""Token arrays on disk, read through memory maps: corpora larger than RAM.

A corpus split is tokenized ONCE into two files beside the corpus manifest:

- ``<split>.bin``: every document's tokens, concatenated, raw little-endian ``uint8`` (bytes),
  ``uint16`` (vocabularies up to 65,536) or ``uint32``;
- ``<split>.idx.npy``: ``int64`` document offsets into it, ``n_documents + 1`` entries (document i is
  ``tokens[offsets[i]:offsets[i + 1]]``);

plus one ``store.json`` per store (tokenizer, dtype, vocabulary size, per split documents / tokens /
bytes). Writing streams document by document (bounded memory whatever the corpus size); reading maps
the file (`numpy.memmap`), so a `DocumentStream` touches only the pages of the segments it yields.

`TokenDocuments` is the sequence a stream, an evaluation and the trainer read: ``len()`` documents,
``docs[i]`` a (memory-mapped) array view, ``lengths()`` without touching the tokens, and
``token_bytes`` (bytes each token id stands for) so an evaluation reports bits per byte for any
tokenizer.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import numpy as np

STORE_FILE = "store.json"


def dtype_for(vocab_size: int) -> np.dtype:
    """The smallest unsigned dtype holding every token id of a vocabulary."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


class TokenDocuments:
    """Documents as one token array (in memory or memory-mapped) plus offsets; ``docs[i]`` is a view."""

    def __init__(self, tokens: np.ndarray, offsets: np.ndarray, token_bytes: np.ndarray | None = None):
        if offsets.ndim != 1 or len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(tokens):
            raise ValueError(f"document offsets must run from 0 to {len(tokens)} tokens")
        self.tokens, self.offsets = tokens, offsets.astype(np.int64, copy=False)
        self.token_bytes = token_bytes  # (V,) bytes per token id; None: one byte per token (the byte tokenizer)

    @classmethod
    def from_arrays(cls, documents: Iterable[np.ndarray], dtype, token_bytes: np.ndarray | None = None):
        """In memory, from per-document token arrays (small corpora that are not prepared)."""
        documents = [np.asarray(d, dtype=dtype) for d in documents]
        offsets = np.zeros(len(documents) + 1, dtype=np.int64)
        np.cumsum([len(d) for d in documents], out=offsets[1:])
        tokens = np.concatenate(documents) if documents else np.zeros(0, dtype=dtype)
        return cls(tokens, offsets, token_bytes)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int | slice) -> np.ndarray | TokenDocuments:
        if isinstance(i, slice):  # the first n documents (`docs[:n]`), still a view
            if i.start not in (None, 0) or i.step not in (None, 1):
                raise ValueError("TokenDocuments slices only as docs[:n]")
            n = len(self) if i.stop is None else min(max(i.stop, 0), len(self))
            return TokenDocuments(self.tokens[: self.offsets[n]], self.offsets[: n + 1], self.token_bytes)
        if not -len(self) <= i < len(self):
            raise IndexError(f"document {i} of {len(self)}")
        i %= len(self)
        return self.tokens[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def lengths(self) -> np.ndarray:
        """Tokens per document, from the offsets alone."""
        return np.diff(self.offsets)

    def num_bytes(self) -> int:
        """Bytes of text the documents hold (streams the tokens once when the tokenizer is not bytes)."""
        if self.token_bytes is None:
            return len(self.tokens)
        total, block = 0, 1 << 24
        for start in range(0, len(self.tokens), block):  # chunked: a memory map is never read whole
            total += int(self.token_bytes[self.tokens[start : start + block]].sum())
        return total


class TokenStoreWriter:
    """Writes the splits of one store into a temporary folder, then moves it into place whole."""

    def __init__(self, path: str | Path, dtype, meta: dict):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        self.dtype, self.meta = np.dtype(dtype), {**meta, "dtype": np.dtype(dtype).name, "splits": {}}

    def write_split(self, split: str, documents: Iterable[np.ndarray | bytes], num_bytes: Iterable[int] | None = None):
        """Append each document's tokens to ``<split>.bin``; one document in memory at a time."""
        offsets, total = [0], 0
        with open(self.tmp / f"{split}.bin", "wb") as f:
            for doc in documents:
                arr = np.frombuffer(doc, dtype=np.uint8) if isinstance(doc, bytes | bytearray) else np.asarray(doc)
                if arr.size and arr.max(initial=0) > np.iinfo(self.dtype).max:
                    raise ValueError(f"token id {int(arr.max())} does not fit the store's {self.dtype.name}")
                arr.astype(self.dtype, copy=False).tofile(f)
                total += len(arr)
                offsets.append(total)
        np.save(self.tmp / f"{split}.idx.npy", np.asarray(offsets, dtype=np.int64))
        self.meta["splits"][split] = {"documents": len(offsets) - 1, "tokens": total}
        return self.meta["splits"][split]

    def close(self) -> Path:
        (self.tmp / STORE_FILE).write_text(json.dumps(self.meta, indent=1))
        if self.path.exists():
            shutil.rmtree(self.path)
        self.tmp.rename(self.path)
        return self.path


def open_split(path: str | Path, split: str, token_bytes: np.ndarray | None = None) -> TokenDocuments:
    """The memory-mapped documents of `split` in the store at `path` (nothing is read but the offsets)."""
    path = Path(path)
    meta = json.loads((path / STORE_FILE).read_text())
    if split not in meta["splits"]:
        raise ValueError(f"token store {str(path)!r} has no split {split!r}; it has {sorted(meta['splits'])}")
    offsets = np.load(path / f"{split}.idx.npy")
    dtype = np.dtype(meta["dtype"])
    if offsets[-1] == 0:  # numpy cannot map an empty file
        tokens = np.zeros(0, dtype=dtype)
    else:
        tokens = np.memmap(path / f"{split}.bin", dtype=dtype, mode="r", shape=(int(offsets[-1]),))
    return TokenDocuments(tokens, offsets, token_bytes)


def store_meta(path: str | Path) -> dict | None:
    """The ``store.json`` of the store at `path`, or None when there is no complete store."""
    file = Path(path) / STORE_FILE
    return json.loads(file.read_text()) if file.is_file() else None
