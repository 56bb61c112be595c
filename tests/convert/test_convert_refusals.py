"""`convert` refuses pickles that hold more than tensors, and checks shapes before allocating, in one line."""

import json
import os
import pickle
import time

import pytest
import torch

from longrange.cli import main
from longrange.convert.hf_reformer import load_hf_reformer
from longrange.model.io import CheckpointError

CONFIG = {
    "vocab_size": 40,
    "hidden_size": 16,
    "num_attention_heads": 2,
    "attention_head_size": 8,
    "feed_forward_size": 24,
    "attn_layers": ["lsh"],
    "axial_pos_shape": [4, 16],
    "axial_pos_embds_dim": [6, 10],
    "max_position_embeddings": 64,
    "lsh_attn_chunk_length": 4,
    "local_attn_chunk_length": 4,
    "num_buckets": 4,
    "num_hashes": 2,
    "is_decoder": True,
}


class _Code:
    """Unpickling this would run a shell command; weights-only loading must refuse it."""

    def __reduce__(self):
        return (os.system, ("echo should never run",))


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_a_pickle_with_code_is_refused_in_one_line(tmp_path, capsys, writer):
    src = tmp_path / "hf"
    src.mkdir()
    (src / "config.json").write_text(json.dumps(CONFIG))
    if writer == "pickle":
        (src / "pytorch_model.bin").write_bytes(pickle.dumps(_Code()))
    else:
        torch.save({"embeddings.word_embeddings.weight": _Code()}, src / "pytorch_model.bin")
    assert main(["convert", "hf-reformer", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a pickle holding more than tensors" in err
    assert not (tmp_path / "out").exists()


def test_shapes_are_checked_before_the_model_is_allocated(tmp_path):
    transformers = pytest.importorskip("transformers")
    hf = transformers.ReformerModelWithLMHead(transformers.ReformerConfig(**CONFIG, num_hidden_layers=1))
    hf.save_pretrained(tmp_path / "hf")
    load_hf_reformer(tmp_path / "hf")  # converts as saved
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "vocab_size": 4_000_000}))
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match="do not fit config.json"):
        load_hf_reformer(tmp_path / "hf")
    assert time.perf_counter() - start < 0.5  # allocating and initialising 4e6 x 32 weights takes longer
