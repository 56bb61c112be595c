"""Hugging Face `ReformerModelWithLMHead` checkpoints -> longrange checkpoints.

A Hugging Face checkpoint directory holds ``config.json`` and ``model.safetensors`` (or a
``model.safetensors.index.json`` with shards, or ``pytorch_model.bin``, read with
``torch.load(weights_only=True)`` so that no code in the file runs). The result is a longrange
model whose logits equal the Hugging Face model's in eval mode when both draw the same LSH
rotations (``hash_seed`` set). The structure is expressed with ordinary config options, not special
cases:

    HF ReformerModelWithLMHead                longrange ModelConfig
    attn_layers ["local", "lsh", ...]         layers (same names)
    is_decoder: true                          (longrange LMs are causal; false is refused)
    LSHSelfAttention                          lsh.convention: hf, lsh.dedup: false (attention/lsh/hf.py)
    num_hashes / num_buckets (int or list)    lsh.n_hashes / lsh.n_buckets
    lsh_attn_chunk_length, lsh_num_chunks_*   lsh.bucket_size, lsh.chunks_before (after must be 0)
    LocalSelfAttention query, key, value      local attention's fused qkv (rows [q ; k ; v])
    local_attn_chunk_length, ..._before       local.chunk_len, local.chunks_before (after must be 0)
    reversible layers + concat + LayerNorm    reversible: true, reversible_readout: concat
    lm_head (2 * hidden -> vocab, bias)       head_bias: true
    axial_pos_shape / axial_pos_embds_dim     positions: axial, axial_shape / axial_dims
    plain position embeddings                 positions: learned, max_len
    hidden_act, feed_forward_size             ff_activation, d_ff
    layer_norm_eps                            norm_eps

The LM-head bias is read from ``lm_head.decoder.bias`` (transformers 4.x files) or ``lm_head.bias``
and added to the logits, as transformers 4.x and trax do (transformers 5.x keeps the parameter but
no longer adds it; freshly initialised models have it at zero, so both agree on those).

    pad_token_id, chunk lengths                eval_pad_multiple (their least common multiple),
                                              eval_pad_min (the shortest), pad_token

transformers pads an input longer than the shortest chunk whose length is not a multiple of the least
common multiple of the chunk lengths, with pad tokens that are masked but still hashed (they move LSH
chunk boundaries); the converted model pads the same way in evaluation (ModelConfig.eval_pad_multiple),
so its logits match at every length.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from longrange.config import ConfigError, ModelConfig
from longrange.model.build import build_model
from longrange.model.io import CheckpointError, save
from longrange.model.lm import LongRangeLM

# transformers' activation names -> ModelConfig.ff_activation
ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}


def _unsupported(feature: str, why: str) -> ConfigError:
    return ConfigError(f"hf-reformer: {feature} is not supported: {why}")


def read_hf_config(src: str | Path) -> dict[str, Any]:
    path = Path(src) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{str(src)!r} is not a Hugging Face checkpoint directory (no config.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{str(path)!r} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{str(path)!r} must hold a JSON object")
    return data


def hf_reformer_config(hf: dict[str, Any], hash_seed: int | None = None) -> ModelConfig:
    """The ModelConfig of a Hugging Face ReformerConfig dict; refuses what longrange cannot reproduce.

    `hash_seed` overrides the checkpoint's (transformers draws fresh rotations on every call when it is null).
    """
    if hf.get("model_type", "reformer") != "reformer":
        raise _unsupported(f"model_type={hf.get('model_type')!r}", "only 'reformer' checkpoints convert")
    if not hf.get("is_decoder", False):
        raise _unsupported("is_decoder=false", "longrange language models are causal (ReformerModelWithLMHead)")
    layers = list(hf.get("attn_layers", []))
    if not layers or set(layers) - {"lsh", "local"}:
        raise _unsupported(f"attn_layers={layers}", "layers must be 'lsh' or 'local'")
    d, heads, head_size = hf["hidden_size"], hf["num_attention_heads"], hf["attention_head_size"]
    if heads * head_size != d:
        raise _unsupported(
            f"num_attention_heads * attention_head_size = {heads} * {head_size} != hidden_size={d}",
            "attention width must equal the model width",
        )
    act = hf.get("hidden_act", "relu")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise _unsupported(f"hidden_act={act!r}", f"choose one of {sorted(ACTIVATIONS)}")
    if hf.get("tie_word_embeddings", False):
        raise _unsupported("tie_word_embeddings=true", "the LM head is (2 * hidden_size) wide")
    for key in ("lsh_num_chunks_after", "local_num_chunks_after"):
        if hf.get(key, 0):
            raise _unsupported(f"{key}={hf[key]}", "a causal model looks at no following chunk")
    extra: dict[str, Any] = {}
    if "lsh" in layers:
        n_buckets = hf.get("num_buckets")
        if n_buckets is None:
            raise _unsupported("num_buckets=null", "transformers picks it at the first call; set it in config.json")
        if hf.get("lsh_attn_chunk_length") is None:
            raise _unsupported("lsh_attn_chunk_length=null", "unchunked LSH attention")
        extra["lsh"] = {
            "n_hashes": hf.get("num_hashes", 1),
            "bucket_size": hf["lsh_attn_chunk_length"],
            "n_buckets": list(n_buckets) if isinstance(n_buckets, (list, tuple)) else n_buckets,
            "chunks_before": hf.get("lsh_num_chunks_before", 1),
            "chunks_after": 0,
            "dedup": False,
            "hash_seed": hash_seed if hash_seed is not None else hf.get("hash_seed"),
            "convention": "hf",
        }
    if "local" in layers:
        if hf.get("local_attn_chunk_length") is None:
            raise _unsupported("local_attn_chunk_length=null", "unchunked local attention")
        extra["local"] = {
            "chunk_len": hf["local_attn_chunk_length"],
            "chunks_before": hf.get("local_num_chunks_before", 1),
            "chunks_after": 0,
        }
    # transformers pads an input longer than the shortest chunk to a multiple of the chunk lengths' least
    # common multiple with pad_token_id (ReformerModel._pad_to_mult_of_chunk_length); the same padding, masked
    chunks = [hf["lsh_attn_chunk_length"] if kind == "lsh" else hf["local_attn_chunk_length"] for kind in set(layers)]
    extra.update(eval_pad_multiple=math.lcm(*chunks), eval_pad_min=min(chunks), pad_token=hf.get("pad_token_id") or 0)
    max_len = hf.get("max_position_embeddings", 4096)
    if hf.get("axial_pos_embds", True):
        shape, dims = list(hf["axial_pos_shape"]), list(hf["axial_pos_embds_dim"])
        if len(shape) != 2 or len(dims) != 2:
            raise _unsupported(f"axial_pos_shape={shape}", "axial positions need exactly two factors")
        extra.update(positions="axial", axial_shape=shape, axial_dims=dims, max_len=min(max_len, math.prod(shape)))
    else:
        extra.update(positions="learned", max_len=max_len)
    cfg = ModelConfig(
        name="hf-reformer",
        vocab_size=hf["vocab_size"],
        d_model=d,
        n_heads=heads,
        d_ff=hf["feed_forward_size"],
        layers=layers,
        segment_len=extra["max_len"],
        dropout=hf.get("hidden_dropout_prob", 0.0),
        reversible=True,
        reversible_readout="concat",
        head_bias=True,
        ff_activation=ACTIVATIONS[act],
        norm_eps=hf.get("layer_norm_eps", 1e-12),
        **extra,
    )
    return cfg


def read_hf_weights(src: str | Path) -> dict[str, Tensor]:
    """Tensors of a checkpoint directory: safetensors (single or sharded) or a weights-only torch pickle."""
    src = Path(src)
    try:
        if (src / "model.safetensors").is_file():
            return load_file(str(src / "model.safetensors"))
        if (src / "model.safetensors.index.json").is_file():
            shards = sorted(set(json.loads((src / "model.safetensors.index.json").read_text())["weight_map"].values()))
            return {k: v for shard in shards for k, v in load_file(str(src / shard)).items()}
        if (src / "pytorch_model.bin").is_file():
            with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is enough
                warnings.simplefilter("ignore", UserWarning)
                tensors = torch.load(src / "pytorch_model.bin", map_location="cpu", weights_only=True)
            if not isinstance(tensors, dict) or not all(isinstance(v, Tensor) for v in tensors.values()):
                raise CheckpointError("pytorch_model.bin does not hold a dict of tensors")
            return tensors
    except pickle.UnpicklingError as err:  # weights-only loading met code or objects: never run them
        raise CheckpointError(
            f"refused {str(src / 'pytorch_model.bin')!r}: it is a pickle holding more than tensors (code or objects "
            "that weights-only loading does not run); convert it to safetensors with a tool you trust"
        ) from err
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError, EOFError) as err:
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"cannot read weights in {str(src)!r} (truncated or corrupt?): {err}") from err
    raise CheckpointError(f"{str(src)!r} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _weight_map(cfg: ModelConfig, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF tensors -> longrange state dict (by name); every HF tensor must be used exactly once."""
    src = {k.removeprefix("reformer."): v for k, v in tensors.items()}
    used: set[str] = set()

    def take(name: str) -> Tensor:
        if name not in src:
            raise CheckpointError(f"hf-reformer: tensor {name!r} is missing; is this a ReformerModelWithLMHead?")
        used.add(name)
        return src[name]

    out = {"embed.weight": take("embeddings.word_embeddings.weight")}
    if cfg.positions == "axial":
        rows, cols = take("embeddings.position_embeddings.weights.0"), take("embeddings.position_embeddings.weights.1")
        out["positions.rows"] = rows.reshape(rows.shape[0], rows.shape[-1])  # (n1, 1, d1) -> (n1, d1)
        out["positions.cols"] = cols.reshape(cols.shape[1], cols.shape[-1])  # (1, n2, d2) -> (n2, d2)
    else:
        out["positions.table.weight"] = take("embeddings.position_embeddings.embedding.weight")
    for i, kind in enumerate(cfg.layers):
        hf, ours = f"encoder.layers.{i}.", f"blocks.{i}."
        pairs = {
            "attention.layer_norm.weight": "attn_norm.weight",
            "attention.layer_norm.bias": "attn_norm.bias",
            "attention.output.dense.weight": "attention.out.weight",
            "feed_forward.layer_norm.weight": "ff_norm.weight",
            "feed_forward.layer_norm.bias": "ff_norm.bias",
            "feed_forward.dense.dense.weight": "ff.up.weight",
            "feed_forward.dense.dense.bias": "ff.up.bias",
            "feed_forward.output.dense.weight": "ff.down.weight",
            "feed_forward.output.dense.bias": "ff.down.bias",
        }
        if kind == "lsh":
            pairs.update({"attention.self_attention.query_key.weight": "attention.qk.weight"})
            pairs.update({"attention.self_attention.value.weight": "attention.v.weight"})
        else:  # local: separate q, k, v -> one (3D, D) projection whose output splits into [q ; k ; v]
            qkv = [take(f"{hf}attention.self_attention.{n}.weight") for n in ("query", "key", "value")]
            out[f"{ours}attention.qkv.weight"] = torch.cat(qkv, dim=0)
        for a, b in pairs.items():
            out[ours + b] = take(hf + a)
    out["norm.weight"], out["norm.bias"] = take("encoder.layer_norm.weight"), take("encoder.layer_norm.bias")
    out["head.weight"] = take("lm_head.decoder.weight")
    bias = [name for name in ("lm_head.decoder.bias", "lm_head.bias") if name in src]
    if not bias:
        raise CheckpointError("hf-reformer: the LM head has no bias (lm_head.bias); is this a ReformerModelWithLMHead?")
    out["head.bias"] = take(bias[0])
    used.update(bias)  # transformers 4.x stores the tied bias under both names
    unexpected = sorted(set(src) - used)
    if unexpected:
        raise CheckpointError(
            f"hf-reformer: unexpected tensors {unexpected[:5]}; the checkpoint does not fit its config"
        )
    return out


def load_hf_reformer(src: str | Path, hash_seed: int | None = None) -> LongRangeLM:
    """A longrange model holding the weights of the Hugging Face Reformer checkpoint in directory `src`."""
    cfg = hf_reformer_config(read_hf_config(src), hash_seed=hash_seed)
    state = _weight_map(cfg, read_hf_weights(src))
    with torch.device("meta"):  # shapes first, allocating nothing: config.json may claim any size
        own = build_model(cfg).state_dict()
    wrong = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape]
    if wrong:
        raise CheckpointError(f"hf-reformer: tensor shapes do not fit config.json (name, file, expected): {wrong[:3]}")
    model = build_model(cfg)
    own = model.state_dict()
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)
    return model.eval()


def convert_hf_reformer(src: str | Path, out: str | Path, hash_seed: int | None = None) -> Path:
    """Convert the Hugging Face Reformer checkpoint in `src` into a longrange checkpoint in `out`."""
    return save(load_hf_reformer(src, hash_seed=hash_seed), out)
