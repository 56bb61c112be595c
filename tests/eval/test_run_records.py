"""What eval and generate read from a run besides its weights: the tokenizer it recorded, its corpus record, the
checkpoint a kill inside the checkpoint swap left, and the corpus path itself."""

import json
import os
import shutil

import pytest
import torch

import longrange
from longrange.cli import main
from longrange.data.corpus import load_corpus, read_corpus_record
from longrange.data.tokenized_corpus import TokenizedCorpus
from longrange.data.tokenizer import get_tokenizer, load_run_tokenizer
from longrange.model.io import checkpoint_dir
from tests.conftest import make_documents


def _bpe_run(tmp_path, corpus_dir):
    """A run folder as `train --tokenizer bpe:300` leaves it: checkpoint/, tokenizer.json and corpus.json, which
    records the tokenizer's name, size and sha256."""
    tokenizer = get_tokenizer("bpe:300", lambda: iter(make_documents(12)))
    corpus = TokenizedCorpus(load_corpus(str(corpus_dir)), tokenizer)
    run = tmp_path / "run"
    model = longrange.build_model(longrange.ModelConfig.from_name("transformer-tiny", segment_len=16, vocab_size=300))
    longrange.save(model, run / "checkpoint")
    tokenizer.save(run / "tokenizer.json")
    (run / "corpus.json").write_text(json.dumps({"spec": str(corpus_dir), **corpus.manifest}))
    return run, tokenizer


def _eval(run, *args):
    return main(["eval", str(run), "--split", "train", "--docs", "1", "--no-progress", *args])


def test_a_bpe_run_whose_tokenizer_is_gone_is_refused_not_read_as_bytes(tmp_path, corpus_dir, capsys):
    run, tokenizer = _bpe_run(tmp_path, corpus_dir)
    assert load_run_tokenizer(run).identity == tokenizer.identity
    assert load_run_tokenizer(run / "checkpoint").identity == tokenizer.identity  # from a checkpoint folder too
    (run / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="trained with a BPE tokenizer of 300 ids .* tokenizer.json is missing"):
        load_run_tokenizer(run / "checkpoint")
    assert _eval(run) == 2
    err = capsys.readouterr().err
    assert "tokenizer.json is missing" in err and "Traceback" not in err
    assert main(["generate", str(run), "--max-new-tokens", "2"]) == 2
    assert "tokenizer.json is missing" in capsys.readouterr().err


def test_a_bpe_run_whose_tokenizer_was_replaced_is_refused(tmp_path, corpus_dir, capsys):
    run, _ = _bpe_run(tmp_path, corpus_dir)
    other = get_tokenizer("bpe:300", lambda: iter([b"quite other text " * 40, b"with other merges " * 30]))
    other.save(run / "tokenizer.json")
    with pytest.raises(ValueError, match="is not the tokenizer run .* was trained with"):
        load_run_tokenizer(run)
    assert _eval(run) == 2 and "was trained with" in capsys.readouterr().err


def test_a_byte_run_with_a_stray_tokenizer_file_is_refused(tmp_path, corpus_dir):
    run, tokenizer = _bpe_run(tmp_path, corpus_dir)
    record = json.loads((run / "corpus.json").read_text())
    (run / "corpus.json").write_text(json.dumps({**record, "tokenizer": {"name": "bytes", "vocab_size": 256}}))
    with pytest.raises(ValueError, match="trained on bytes, but it holds a tokenizer.json"):
        load_run_tokenizer(run)


def test_a_folder_without_a_record_is_read_as_it_is(tmp_path):
    longrange.save(longrange.build_model(longrange.ModelConfig.from_name("transformer-tiny")), tmp_path / "saved")
    assert load_run_tokenizer(tmp_path / "saved").name == "bytes"


@pytest.mark.parametrize(
    "text, match",
    [
        ("[1, 2, 3]", "holds a JSON list, not an object"),
        ('{"spec": "stdlib", "sha2', "is not a valid corpus record"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_a_corpus_record_that_is_not_an_object_is_one_line_naming_the_file(tmp_path, corpus_dir, capsys, text, match):
    run, _ = _bpe_run(tmp_path, corpus_dir)
    (run / "corpus.json").write_text(text)
    with pytest.raises(ValueError, match=match):
        read_corpus_record(run)
    assert _eval(run) == 2
    err = capsys.readouterr().err
    assert match in err and "corpus.json" in err and "Traceback" not in err


def test_eval_and_generate_find_the_checkpoint_a_kill_inside_the_swap_left(tmp_path, capsys):
    run = tmp_path / "run"
    model = longrange.build_model(longrange.ModelConfig.from_name("transformer-tiny", segment_len=16))
    # keep=1: killed between `checkpoint -> checkpoint.old` and the new one
    longrange.save(model, run / "checkpoint.old")
    (run / "checkpoint.tmp").mkdir()  # the new one, not yet whole
    assert checkpoint_dir(run) == run / "checkpoint.old"
    loaded = longrange.load(run)
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )
    shutil.move(run / "checkpoint.old", run / "checkpoint-step-00000004")  # keep > 1: the kept one is the newest
    longrange.save(model, run / "checkpoint-step-00000002")
    assert checkpoint_dir(run) == run / "checkpoint-step-00000004"
    assert main(["generate", str(run), "--max-new-tokens", "3", "--seed", "0"]) == 0
    longrange.save(model, run / "checkpoint")
    assert checkpoint_dir(run) == run / "checkpoint"  # a whole checkpoint/ always comes first


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_named_pipe_as_data_is_refused_instead_of_waiting(tmp_path, capsys):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="is a named pipe or socket"):
        load_corpus(str(fifo))
    assert main(["train", "--data", str(fifo), "--out", str(tmp_path / "r"), "--steps", "1"]) == 2
    assert "named pipe" in capsys.readouterr().err
