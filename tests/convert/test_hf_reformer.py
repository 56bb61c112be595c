"""Hugging Face Reformer checkpoints convert to longrange models with the same logits."""

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")

from longrange.cli import main  # noqa: E402
from longrange.config import ConfigError  # noqa: E402
from longrange.convert.hf_reformer import convert_hf_reformer, load_hf_reformer  # noqa: E402
from longrange.model.io import CheckpointError, load  # noqa: E402

VOCAB = 40


def hf_checkpoint(tmp_path, **overrides):
    """A small random ReformerModelWithLMHead saved to tmp_path/hf; returns (model in eval mode, path)."""
    config = dict(
        vocab_size=VOCAB,
        hidden_size=16,
        num_attention_heads=2,
        attention_head_size=8,
        feed_forward_size=24,
        attn_layers=["lsh"],
        axial_pos_shape=[4, 16],
        axial_pos_embds_dim=[6, 10],
        max_position_embeddings=64,
        lsh_attn_chunk_length=4,
        local_attn_chunk_length=4,
        num_buckets=4,
        num_hashes=2,
        hash_seed=3,
        is_decoder=True,
        hidden_act="gelu",
    )
    config.update(overrides)
    config["num_hidden_layers"] = len(config["attn_layers"])
    torch.manual_seed(0)
    model = transformers.ReformerModelWithLMHead(transformers.ReformerConfig(**config)).eval()
    with torch.no_grad():  # move every weight away from its (often constant) initial value
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
        # transformers versions differ in which head bias they add (4.x and >= 5.24: the tied
        # decoder bias; 5.0-5.23: none; 5.24 unties lm_head.bias from it): zero both, so all agree
        model.lm_head.bias.zero_()
        model.lm_head.decoder.bias.zero_()
    path = tmp_path / "hf"
    model.save_pretrained(path)
    return model, path


def assert_same_logits(hf_model, path, length, batch=2):
    ours = load_hf_reformer(path)
    tokens = torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf_model(tokens).logits
        got = ours(tokens).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    return ours


@pytest.mark.parametrize(
    "name, overrides, length",
    [
        ("lsh", {"attn_layers": ["lsh", "lsh"]}, 32),  # 8 chunks per round, 2 rounds
        ("local", {"attn_layers": ["local", "local"], "hidden_act": "relu"}, 24),
        ("mixed", {"attn_layers": ["local", "lsh"], "local_attn_chunk_length": 8}, 32),
        ("factorised", {"num_buckets": [2, 4], "num_hashes": 3, "hidden_act": "gelu_new"}, 48),
        ("one chunk", {"attn_layers": ["lsh", "local"]}, 4),
        ("learned positions", {"axial_pos_embds": False, "lsh_num_chunks_before": 2}, 20),
    ],
)
def test_logits_match_transformers(tmp_path, name, overrides, length):
    hf_model, path = hf_checkpoint(tmp_path, **overrides)
    ours = assert_same_logits(hf_model, path, length)
    assert ours.config.lsh.convention == "hf" or "lsh" not in ours.config.layers


@pytest.mark.parametrize(
    "overrides, length",
    [
        ({"attn_layers": ["local", "lsh"], "local_attn_chunk_length": 8}, 29),  # lcm 8: padded to 32
        ({"attn_layers": ["local", "lsh"], "local_attn_chunk_length": 6}, 14),  # lcm 12: padded to 24, not 16
        ({"attn_layers": ["lsh", "local", "lsh"], "local_attn_chunk_length": 6, "num_hashes": 3}, 26),
        ({"attn_layers": ["local", "lsh"], "local_attn_chunk_length": 8}, 7),  # within the shortest chunk: no padding
    ],
    ids=["mixed", "lcm-12", "lcm-12-three-layers", "shorter-than-a-chunk"],
)
def test_logits_match_transformers_at_lengths_transformers_pads(tmp_path, overrides, length):
    """transformers pads such inputs to the least common multiple of the chunk lengths; the padding's hashes
    move LSH chunk boundaries, so the converted model must pad the same way to give the same logits."""
    hf_model, path = hf_checkpoint(tmp_path, **overrides)
    ours = assert_same_logits(hf_model, path, length)
    tokens = torch.randint(1, VOCAB, (2, length))
    mask = torch.ones(2, length, dtype=torch.bool)  # transformers pads a given attention mask too
    with torch.no_grad():
        expected = hf_model(tokens, attention_mask=mask.long()).logits
        torch.testing.assert_close(ours(tokens, pad_mask=mask).logits, expected, rtol=1e-4, atol=1e-5)


def test_axial_positions_follow_the_hf_grid(tmp_path):
    hf_model, path = hf_checkpoint(tmp_path)
    ours = load_hf_reformer(path)
    positions = torch.arange(64)[None]
    expected = hf_model.reformer.embeddings.position_embeddings(positions)
    torch.testing.assert_close(ours.positions(positions), expected)


def test_converted_checkpoint_round_trips(tmp_path, capsys):
    hf_model, path = hf_checkpoint(tmp_path, attn_layers=["local", "lsh"])
    assert main(["convert", "hf-reformer", str(path), str(tmp_path / "ours")]) == 0
    assert "ours" in capsys.readouterr().out
    model = load(tmp_path / "ours").eval()
    tokens = torch.randint(1, VOCAB, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, hf_model(tokens).logits, rtol=1e-4, atol=1e-5)


def test_pytorch_bin_and_nonzero_head_bias(tmp_path):
    hf_model, path = hf_checkpoint(tmp_path)
    (path / "model.safetensors").unlink()  # the older pickle format, as transformers 4.x wrote it
    state = {k: v.clone() for k, v in hf_model.state_dict().items()}
    state["lm_head.decoder.bias"] = state["lm_head.bias"] = torch.randn(VOCAB)
    torch.save(state, path / "pytorch_model.bin")
    ours = load_hf_reformer(path)
    tokens = torch.randint(1, VOCAB, (1, 16))
    with torch.no_grad():  # the bias is added as in transformers 4.x / trax
        torch.testing.assert_close(
            ours(tokens).logits, hf_model(tokens).logits + state["lm_head.bias"], rtol=1e-4, atol=1e-5
        )


def test_reversible_training_runs_on_a_converted_model(tmp_path):
    _, path = hf_checkpoint(tmp_path, attn_layers=["local", "lsh"])
    model = load_hf_reformer(path).train()
    out = model(torch.randint(0, VOCAB, (1, 16)), targets=torch.randint(0, VOCAB, (1, 16)))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"is_decoder": False}, "is_decoder=false"),
        ({"attention_head_size": 4}, "attention_head_size"),
        ({"num_buckets": None}, "num_buckets=null"),
        ({"hidden_act": "tanh"}, "hidden_act='tanh'"),
        ({"axial_pos_shape": [4, 4, 4], "axial_pos_embds_dim": [4, 4, 8]}, "axial_pos_shape"),
    ],
)
def test_unsupported_features_are_refused(tmp_path, overrides, message):
    path = tmp_path / "hf"
    path.mkdir()
    config = transformers.ReformerConfig(
        hidden_size=16,
        num_attention_heads=2,
        attention_head_size=8,
        attn_layers=["lsh"],
        is_decoder=True,
        num_buckets=4,
    ).to_dict()
    config.update(overrides)
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="hf-reformer: .*not supported") as err:
        convert_hf_reformer(path, tmp_path / "out")
    assert message in str(err.value)


def test_chunks_after_in_a_causal_model_is_refused(tmp_path):
    path = tmp_path / "hf"
    path.mkdir()
    config = transformers.ReformerConfig(attn_layers=["lsh"], is_decoder=True).to_dict()
    config["lsh_num_chunks_after"] = 1
    (path / "config.json").write_text(json.dumps(config))
    assert main(["convert", "hf-reformer", str(path), str(tmp_path / "out")]) == 2


def test_corrupt_and_mismatched_checkpoints_are_refused(tmp_path, capsys):
    _, path = hf_checkpoint(tmp_path)
    weights = (path / "model.safetensors").read_bytes()
    (path / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_hf_reformer(path)
    assert main(["convert", "hf-reformer", str(path), str(tmp_path / "out")]) == 2
    assert "Traceback" not in capsys.readouterr().err

    (path / "model.safetensors").write_bytes(weights)
    config = json.loads((path / "config.json").read_text())
    wider = {"hidden_size": 32, "attention_head_size": 16, "axial_pos_embds_dim": [16, 16]}
    (path / "config.json").write_text(json.dumps({**config, **wider}))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_hf_reformer(path)
    (path / "config.json").write_text(json.dumps({**config, "attn_layers": ["local"]}))
    with pytest.raises(CheckpointError, match="missing|unexpected"):
        load_hf_reformer(path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_hf_reformer(path)
