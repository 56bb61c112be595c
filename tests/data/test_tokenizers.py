"""Tokenizers: BPE round-trips text, bits per byte keep the byte model's definition, the run keeps its tokenizer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import longrange
from longrange.data.corpus import Corpus, load_corpus
from longrange.data.stream import IGNORE_INDEX, DocumentStream
from longrange.data.token_store import TokenDocuments
from longrange.data.tokenized_corpus import TokenizedCorpus
from longrange.data.tokenizer import ByteTokenizer, get_tokenizer, load_run_tokenizer
from longrange.eval.evaluate import evaluate
from tests.conftest import make_documents

tokenizers = pytest.importorskip("tokenizers")

TEXT = "def main():\n    return 'héllo wörld' + \"\\u2603 ☃\"  # ünïcödé, emoji 🐍, tabs\t and\r\n lines\n"


@pytest.fixture(scope="module")
def bpe():
    return get_tokenizer("bpe:300", lambda: iter(make_documents(12)))


def test_bpe_round_trips_text_and_merges(bpe):
    ids = bpe.encode(TEXT)
    assert bpe.decode(ids) == TEXT  # characters never seen in training too: the 256 bytes are in the vocabulary
    assert b"".join(bpe.id_to_bytes(i) for i in ids) == TEXT.encode()
    doc = make_documents(1)[0]
    assert len(bpe.encode(doc)) < len(doc)  # it merged something
    assert bpe.vocab_size == 300 and bpe.dtype == np.uint16
    assert int(bpe.token_bytes[bpe.encode_document(doc)].sum()) == len(doc)


@pytest.mark.parametrize("spec,match", [("bpe:100", "VOCAB must be an integer > 256"), ("words", "is not one of")])
def test_bad_tokenizer_spec_is_one_clear_line(spec, match):
    with pytest.raises(ValueError, match=match):
        get_tokenizer(spec, lambda: iter([b"x"]))


def test_bpe_file_round_trip_and_non_byte_level_refused(bpe, tmp_path):
    bpe.save(tmp_path / "tok.json")
    again = get_tokenizer(str(tmp_path / "tok.json"))
    assert again.encode(TEXT) == bpe.encode(TEXT) and again.identity == bpe.identity
    wordlevel = tokenizers.Tokenizer(tokenizers.models.WordLevel({"hello": 0, "[UNK]": 1}, unk_token="[UNK]"))
    wordlevel.save(str(tmp_path / "words.json"))
    with pytest.raises(ValueError, match="not a byte-level BPE"):
        get_tokenizer(str(tmp_path / "words.json"))


def _total_nats(model, documents, segment_len):
    """Sum of the next-token losses over every document, read segment by segment with state (the definition)."""
    stream = DocumentStream(documents, 1, segment_len, shuffle=False, loop=False)
    state, total = model.init_state(1), 0.0
    for batch in stream:
        out = model(batch.tokens, state=state, doc_start=batch.doc_start)
        state = out.state
        total += F.cross_entropy(
            out.logits.flatten(0, 1), batch.targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        ).item()
    return total


@torch.no_grad()
def test_bits_per_byte_is_total_nats_over_covered_bytes(bpe):
    docs = make_documents(3)
    torch.manual_seed(0)
    byte_model = longrange.build_model(longrange.ModelConfig.from_name("transformer-xl-tiny", segment_len=16)).eval()
    result = evaluate(byte_model, docs, batch_size=1)
    nats = _total_nats(byte_model, docs, 16)
    assert result["bytes"] == result["tokens"] == sum(len(d) - 1 for d in docs)
    assert result["bpb"] == pytest.approx(result["loss"] / math.log(2), rel=1e-9)
    assert result["bpb"] == pytest.approx(nats / (result["bytes"] * math.log(2)), rel=1e-5)

    bpe_model = longrange.build_model(
        longrange.ModelConfig.from_name("transformer-xl-tiny", segment_len=16, vocab_size=300)
    ).eval()
    tokens = TokenDocuments.from_arrays([bpe.encode_document(d) for d in docs], bpe.dtype, bpe.token_bytes)
    result = evaluate(bpe_model, tokens, batch_size=1)
    covered = sum(len(d) - len(bpe.id_to_bytes(int(t[0]))) for d, t in zip(docs, tokens, strict=True))
    nats = _total_nats(bpe_model, tokens, 16)
    assert result["bytes"] == covered and result["tokens"] == sum(len(t) - 1 for t in tokens)
    assert result["bpb"] == pytest.approx(nats / (covered * math.log(2)), rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nats / result["tokens"]), rel=1e-5)


def test_tokenized_corpus_flows_vocab_into_config_and_bytes_stay_unchanged(bpe):
    corpus = Corpus("docs", make_documents(12))
    assert TokenizedCorpus(corpus, ByteTokenizer()).split("train") == corpus.split("train")
    tokenized = TokenizedCorpus(corpus, bpe)
    train = tokenized.split("train")
    assert isinstance(train, TokenDocuments) and len(train) == len(corpus.split("train"))
    assert tokenized.model_config(longrange.ModelConfig.from_name("transformer-tiny")).vocab_size == 300
    assert tokenized.manifest["tokenizer"]["vocab_size"] == 300


def test_prepared_corpus_is_tokenized_once_into_a_store(bpe, tmp_path):
    from longrange.data.prepare import prepare_local

    src = tmp_path / "pg19"
    for folder, n in {"train": 4, "validation": 1, "test": 1}.items():
        (src / folder).mkdir(parents=True)
        for i, doc in enumerate(make_documents(n, seed=len(folder))):
            (src / folder / f"{i}.txt").write_bytes(doc)
    corpus = load_corpus(prepare_local("pg19", src, tmp_path / "data"))
    first = TokenizedCorpus(corpus, bpe).split("train")
    assert isinstance(first.tokens, np.memmap) and first.tokens.dtype == np.uint16
    stores = list((tmp_path / "data" / "pg19" / "tokens").glob("bpe-*"))
    assert len(stores) == 1
    mtime = (stores[0] / "train.bin").stat().st_mtime_ns
    again = TokenizedCorpus(corpus, bpe).split("train")
    assert (stores[0] / "train.bin").stat().st_mtime_ns == mtime  # reused, not rewritten
    assert [d.tolist() for d in again] == [bpe.encode(d) for d in corpus.text_documents("train")]


def test_train_with_bpe_records_the_tokenizer_and_eval_reports_bits_per_byte(tmp_path, corpus_dir, capsys):
    from longrange.cli import main

    run = tmp_path / "run"
    args = ["train", "--preset", "transformer-tiny", "--data", str(corpus_dir), "--out", str(run)]
    opts = ["--tokenizer", "bpe:280", "--steps", "2", "--batch-size", "2", "--segment-len", "16", "--no-progress"]
    assert main([*args, *opts, "--device", "cpu", "--checkpoint-every", "2"]) == 0
    tok = load_run_tokenizer(run)
    assert tok.vocab_size == 280 and longrange.load(run).config.vocab_size == 280
    capsys.readouterr()
    assert main(["eval", str(run), "--split", "train", "--docs", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "bits per byte over" in out and "tokens, perplexity" in out
