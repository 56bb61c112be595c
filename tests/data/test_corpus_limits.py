"""Corpus limits: a capped document size, held-out splits that say why they are empty, change detection."""

import json
from pathlib import Path

import pytest

from longrange.data.corpus import corpus_change, load_corpus


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_an_endless_file_stops_at_the_document_cap():
    """/dev/zero never ends: reading stops at the cap with one line naming the file and the cap."""
    with pytest.raises(ValueError, match=r"/dev/zero is larger than the document size cap of 4,096 bytes"):
        load_corpus("/dev/zero", max_document_bytes=4096)


def test_document_cap_applies_to_files_and_jsonl_lines(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "big.txt").write_text("x" * 200)
    with pytest.raises(ValueError, match=r"big.txt is larger than the document size cap of 100 bytes"):
        load_corpus(tmp_path / "d", max_document_bytes=100)
    lines = [json.dumps({"text": "y" * 50}), json.dumps({"text": "z" * 500})]
    (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"c.jsonl:2 is larger than the document size cap"):
        load_corpus(tmp_path / "c.jsonl", max_document_bytes=100)
    assert len(load_corpus(tmp_path / "c.jsonl", max_document_bytes=1000).documents) == 2  # the file may exceed it


def test_a_corpus_of_two_documents_says_it_has_no_held_out_split(tmp_path):
    (tmp_path / "two.txt").write_text("first document\fsecond document")
    corpus = load_corpus(tmp_path / "two.txt")
    assert corpus.held_out("train")
    with pytest.raises(ValueError, match=r"2 document\(s\), so it has no 'test' split.*at least 3.*--split train"):
        corpus.held_out("test")


def test_a_changed_corpus_is_described(corpus_dir):
    recorded = {"spec": str(corpus_dir), **load_corpus(corpus_dir).manifest}
    assert corpus_change(recorded, load_corpus(corpus_dir)) is None
    (corpus_dir / "new.txt").write_text("a document added after training\n")
    change = corpus_change(recorded, load_corpus(corpus_dir))
    assert change and "changed since the run was trained (documents 8 -> 9, bytes" in change
    assert corpus_change({"spec": "old run without a hash"}, load_corpus(corpus_dir)) is None
