"""Model FLOPs per token on hand-computed tiny configs, and the MFU column of `bench train`."""

import json

import pytest

from longrange.bench.mfu import matmul_ceiling, matmul_params_per_token, mfu, model_flops_per_token
from longrange.cli import main
from longrange.config import ModelConfig

# vocab 16, d 8, d_ff 32, one layer, T = 4. Per-token Linears: attention 4 d^2 = 256 (qkv + out, or q + kv + out),
# feed-forward 2 d d_ff = 512, head 16 d = 128: N_tok = 896, 6 N_tok = 5376
TINY = {"vocab_size": 16, "d_model": 8, "n_heads": 2, "d_ff": 32, "segment_len": 4}


def test_full_attention_flops_by_hand():
    cfg = ModelConfig(**TINY, layers=["full"])
    assert matmul_params_per_token(cfg) == 896
    # causal: a query attends (T + 1) / 2 = 2.5 keys on average; 12 d K = 12 * 8 * 2.5 = 240
    assert model_flops_per_token(cfg) == 5376 + 240


def test_xl_flops_count_memory_position_scores_and_w_r_per_segment():
    cfg = ModelConfig(**TINY, layers=["xl"], xl={"mem_len": 4})
    assert matmul_params_per_token(cfg) == 896  # W_R runs on the L + 1 distances, not on each token
    # K = 4 + 2.5 = 6.5: content + position scores + values 18 d K = 936; W_R 6 d^2 (L + 1) / T = 6 * 64 * 9 / 4 = 864
    assert model_flops_per_token(cfg) == 5376 + 936 + 864
    # with the T5 bias: content scores and values only, 12 d K = 624
    assert model_flops_per_token(cfg.replace(**{"xl.positions": "t5"})) == 5376 + 624


def test_knn_flops_count_local_and_retrieved_keys_and_optionally_the_search():
    cfg = ModelConfig(**TINY, layers=["knn"], knn={"mem_len": 4, "topk": 2, "memory_size": 100})
    # local 12 d (4 + 2.5) = 624, retrieved 12 d k = 192
    assert model_flops_per_token(cfg) == 5376 + 624 + 192
    # the exact search: 2 d M per token
    assert model_flops_per_token(cfg, include_search=True) == 5376 + 624 + 192 + 2 * 8 * 100


def test_compressive_flops_add_the_compression_and_its_loss():
    sec = {"mem_len": 4, "cmem_len": 2, "rate": 2, "compression": "conv", "loss": "attention"}
    cfg = ModelConfig(**TINY, layers=["compressive"], compressive=sec)
    k = 4 + 2 + 2.5
    attention = 18 * 8 * k + 6 * 64 * (6 + 4 + 1) / 4
    compression = 6 * 64 + 12 * 8 * (4 + 2) + 12 * 64 / 2  # conv, loss attentions, projected slots
    assert model_flops_per_token(cfg) == pytest.approx(5376 + attention + compression)


def test_longer_segments_cost_more_attention_per_token():
    cfg = ModelConfig(**TINY, layers=["full"])
    assert model_flops_per_token(cfg, 8) - model_flops_per_token(cfg, 4) == 12 * 8 * 2


def test_mfu_is_achieved_over_ceiling():
    assert mfu(1e6, 100.0, 1.0) == pytest.approx(0.1)  # 1e8 FLOP/s over 1 GFLOP/s
    ceiling = matmul_ceiling(ModelConfig(**TINY, layers=["full"]), 64, threads=1, seconds=0.03)
    assert ceiling["gflops"] > 0 and len(ceiling["by_shape"]) == 3


def test_bench_train_reports_mfu(tmp_path, capsys):
    out = tmp_path / "train"
    args = ["bench", "train", "--presets", "transformer-tiny", "--steps", "1", "--batch-size", "1"]
    assert main([*args, "--threads", "1", "--out", str(out)]) == 0
    row = json.loads((out / "train.json").read_text())["rows"][0]
    assert 0 < row["mfu"] < 1.5 and row["ceiling_gflops"] > 0
    assert row["model_flops_per_token"] == model_flops_per_token(ModelConfig.from_name("transformer-tiny"))
    assert "MFU" in capsys.readouterr().out
