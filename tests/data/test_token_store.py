"""Memory-mapped token stores: equal to the in-memory stream batch for batch, and bounded in memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from longrange.data.stream import DocumentStream
from longrange.data.token_store import TokenDocuments, TokenStoreWriter, dtype_for, open_split
from tests.conftest import make_documents


def _store(tmp_path, docs, dtype=np.uint8):
    writer = TokenStoreWriter(tmp_path / "store", dtype, {"tokenizer": "bytes"})
    writer.write_split("train", docs)
    return open_split(writer.close(), "train")


def test_dtype_fits_the_vocabulary():
    assert dtype_for(256) == np.uint8 and dtype_for(257) == np.uint16 and dtype_for(70_000) == np.uint32


@pytest.mark.parametrize("shuffle", [True, False])
def test_memory_mapped_stream_equals_in_memory_stream_including_resume(tmp_path, shuffle):
    docs = make_documents(9) + [b"x"]  # a 1-byte document is skipped by both
    mapped = _store(tmp_path, docs)
    assert isinstance(mapped.tokens, np.memmap)
    a = DocumentStream(docs, 3, 7, seed=5, shuffle=shuffle)
    b = DocumentStream(mapped, 3, 7, seed=5, shuffle=shuffle)
    for _ in range(13):
        x, y = a.next_batch(), b.next_batch()
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.targets, y.targets)
        assert torch.equal(x.doc_start, y.doc_start)
    resumed = DocumentStream(mapped, 3, 7, seed=5, shuffle=shuffle)
    resumed.load_state_dict(a.state_dict())
    for _ in range(25):
        x, y = a.next_batch(), resumed.next_batch()
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.targets, y.targets)


def test_non_looping_mapped_stream_counts_the_same_segments(tmp_path):
    docs = make_documents(5)
    a = DocumentStream(docs, 2, 6, loop=False, shuffle=False)
    b = DocumentStream(_store(tmp_path, docs), 2, 6, loop=False, shuffle=False)
    assert a.segments_per_row() == b.segments_per_row()
    assert sum(1 for _ in a) == sum(1 for _ in b) == max(a.segments_per_row())


def test_subword_store_holds_ids_above_255(tmp_path):
    docs = [np.array([300, 1, 65_000, 7]), np.array([5, 6])]
    store = _store(tmp_path, docs, np.uint16)
    assert store.tokens.dtype == np.uint16 and store[0].tolist() == [300, 1, 65_000, 7] and len(store) == 2
    with pytest.raises(ValueError, match="does not fit"):
        _store(tmp_path, [np.array([70_000])], np.uint16)


def test_stream_over_a_large_mapped_corpus_stays_in_bounded_memory(tmp_path):
    size = 64 << 20  # 64 MiB of tokens in 4 documents of 16 MiB; the stream must read only its segments (< 2 MiB)
    rng = np.random.default_rng(0)
    chunk = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    writer = TokenStoreWriter(tmp_path / "big", np.uint8, {"tokenizer": "bytes"})
    writer.write_split("train", (np.tile(chunk, size // 4 // len(chunk)) for _ in range(4)))
    docs = open_split(writer.close(), "train")
    assert len(docs.tokens) == size
    tracemalloc.start()
    stream = DocumentStream(docs, 4, 4096, seed=0)
    for _ in range(50):
        batch = stream.next_batch()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert batch.tokens.shape == (4, 4096)
    assert peak < size // 32, f"peak {peak:,} bytes traced while streaming a {size:,}-byte corpus"


def test_token_documents_from_arrays_count_bytes_with_a_token_byte_table():
    table = np.array([1, 2, 3])
    docs = TokenDocuments.from_arrays([np.array([0, 2]), np.array([1, 1, 1])], np.uint16, table)
    assert docs.num_bytes() == 4 + 6 and docs.lengths().tolist() == [2, 3]
