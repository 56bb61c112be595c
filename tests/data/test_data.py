"""Corpora and document streams."""

import json

import pytest
import torch

from longrange.data import ByteTokenizer, DocumentStream, load_corpus
from longrange.data.stream import IGNORE_INDEX
from tests.conftest import make_documents


def _walk(stream):
    """Reassemble each document's inputs and targets from the stream, per row."""
    inputs, targets, current = [], [], [None] * stream.batch_size
    for batch in stream:
        for b in range(stream.batch_size):
            real = batch.targets[b] != IGNORE_INDEX
            if batch.doc_start[b]:
                current[b] = [bytearray(), bytearray()]
                inputs.append(current[b][0])
                targets.append(current[b][1])
            if real.any():
                current[b][0].extend(batch.tokens[b][real].tolist())
                current[b][1].extend(batch.targets[b][real].tolist())
    return [bytes(x) for x in inputs], [bytes(x) for x in targets]


@pytest.mark.parametrize("batch_size,segment_len", [(1, 7), (3, 16), (4, 5)])
def test_stream_yields_every_byte_once_with_doc_start(batch_size, segment_len):
    docs = make_documents(7)
    stream = DocumentStream(docs, batch_size, segment_len, loop=False, shuffle=False)
    inputs, targets = _walk(stream)
    assert sorted(targets) == sorted(d[1:] for d in docs)  # every byte after the first, exactly once
    assert sorted(inputs) == sorted(d[:-1] for d in docs)


def test_stream_resumes_exactly_from_state_dict():
    docs = make_documents(6)
    a = DocumentStream(docs, 2, 9, seed=3)
    for _ in range(5):
        a.next_batch()
    b = DocumentStream(docs, 2, 9, seed=3)
    b.load_state_dict(a.state_dict())
    for _ in range(20):
        x, y = a.next_batch(), b.next_batch()
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.doc_start, y.doc_start)


def test_ranks_split_rows_of_the_global_batch():
    docs = make_documents(8)
    whole = DocumentStream(docs, 4, 8, shuffle=False).next_batch()
    parts = [DocumentStream(docs, 4, 8, shuffle=False, rank=r, world_size=2).next_batch() for r in range(2)]
    assert torch.equal(torch.cat([p.tokens for p in parts]), whole.tokens)


def test_too_few_documents_for_the_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="smaller batch_size"):
        DocumentStream(make_documents(2), 4, 8)


def test_directory_corpus_split_is_deterministic_and_disjoint(corpus_dir):
    corpus = load_corpus(str(corpus_dir))
    splits = corpus.split_indices()
    assert splits == load_corpus(str(corpus_dir)).split_indices()
    seen = [i for name in ("train", "valid", "test") for i in splits[name]]
    assert sorted(seen) == list(range(len(corpus.documents)))
    assert all(splits[name] for name in ("train", "valid", "test"))


def test_jsonl_and_text_file_corpora(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"document number {i}"}) for i in range(4)))
    assert len(load_corpus(str(path)).documents) == 4
    text = tmp_path / "book.txt"
    text.write_text("chapter one\fchapter two\f")
    assert load_corpus(str(text)).documents == [b"chapter one", b"chapter two"]


def test_bad_corpora_give_one_clear_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no text documents"):
        load_corpus(str(empty))
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "x.dat").write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ValueError, match="not UTF-8"):
        load_corpus(str(tmp_path / "bin"))
    with pytest.raises(ValueError, match="does not exist"):
        load_corpus(str(tmp_path / "missing"))


def test_stdlib_corpus_is_built_in_with_a_manifest():
    corpus = load_corpus(None)
    assert corpus.manifest["source"] == "python-stdlib" and len(corpus.manifest["sha256"]) == 64
    assert len(corpus.documents) > 50
    assert any(d.startswith(b"# file: asyncio/") for d in corpus.documents)  # a package is one document


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    assert tok.decode(tok.encode("héllo")) == "héllo"
