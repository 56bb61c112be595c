"""Save and load models: safetensors weights + `config.yaml` in one directory.

Weights are read with safetensors only, so loading a checkpoint from an untrusted source never
runs code. A directory may be a run directory (we then use its ``checkpoint/``) or a checkpoint.

`load` checks the file's tensor shapes (read from the safetensors header, no tensor data) against a
model built on the meta device before it allocates anything, so a hostile or mistaken ``config.yaml``
(``vocab_size: 100000000``) is refused in milliseconds instead of allocating gigabytes; shapes that agree with
such a config are refused when the model and the file's tensors together need more than the machine's memory
(`check_memory`); and it refuses weights that are not finite (a diverged run), which would only ever produce NaN.

A folder written by `longrange export hf` (or by transformers' ``save_pretrained`` of a `longrange.hf` model) is
read too: its ``config.json`` holds the ModelConfig under the key ``longrange`` and its weights carry the same
names, so this module reads it with the standard library, without importing transformers.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_model

from longrange.config import MAX_CONFIG_BYTES, ConfigError, ModelConfig
from longrange.model.build import build_model
from longrange.model.lm import LongRangeLM

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"
HF_CONFIG = "config.json"  # a Hugging Face export (`longrange.hf`): the ModelConfig inside, under HF_CONFIG_KEY
HF_MODEL_TYPE = "longrange"
HF_CONFIG_KEY = "longrange"


class CheckpointError(ValueError):
    """A checkpoint that is missing, truncated, corrupt or does not fit the model."""


_FALLBACKS_SAID: set[Path] = set()


def checkpoint_dir(path: str | Path) -> Path:
    """The directory holding weights + config: `path` itself, or its ``checkpoint/`` subdirectory; when a run was
    killed inside the checkpoint swap (``checkpoint/`` already moved aside, the new one not yet in place), the
    whole one it left, as ``--resume`` finds it: ``checkpoint.old``, else the newest ``checkpoint-step-N``."""
    path = Path(path)
    older = sorted(path.glob("checkpoint-step-*"), reverse=True) if path.is_dir() else []
    for candidate in (path, path / "checkpoint", path / "checkpoint.old", *older):
        if (candidate / WEIGHTS).is_file() and ((candidate / CONFIG).is_file() or (candidate / HF_CONFIG).is_file()):
            if candidate.name != "checkpoint" and candidate != path and candidate not in _FALLBACKS_SAID:
                _FALLBACKS_SAID.add(candidate)  # once, though a load asks for the folder several times
                log.warning("%s has no checkpoint/ (killed while writing one?): reading %s", path, candidate.name)
            return candidate
    raise CheckpointError(
        f"{str(path)!r} holds no checkpoint ({WEIGHTS} + {CONFIG}, or a Hugging Face export's {HF_CONFIG}); "
        "train one first"
    )


def save(model: LongRangeLM, path: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.yaml`` into directory `path` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.to_file(path / CONFIG)
    save_model(model, str(path / WEIGHTS))
    return path


def load_config(path: str | Path) -> ModelConfig:
    folder = checkpoint_dir(path)
    if (folder / CONFIG).is_file():
        return ModelConfig.from_file(folder / CONFIG)
    return read_hf_config(folder / HF_CONFIG)


def read_hf_config(file: Path) -> ModelConfig:
    """The ModelConfig in a Hugging Face export's ``config.json`` (ConfigError, one line, for any other file)."""
    try:
        with open(file, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"cannot read {str(file)!r}: {err}") from err
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{str(file)!r} is larger than {MAX_CONFIG_BYTES} bytes; a config is a few hundred")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: a hostile [[[[...]]]]
        raise ConfigError(f"{str(file)!r} is not valid JSON: {err}") from err
    if (
        not isinstance(data, dict)
        or data.get("model_type") != HF_MODEL_TYPE
        or not isinstance(data.get(HF_CONFIG_KEY), dict)
    ):
        kind = data.get("model_type") if isinstance(data, dict) else None
        raise ConfigError(
            f"{str(file)!r} is not a longrange model's config (model_type {kind!r}, expected {HF_MODEL_TYPE!r} "
            f"with a {HF_CONFIG_KEY!r} mapping); a Hugging Face Reformer converts with `longrange convert hf-reformer`"
        )
    return ModelConfig.from_dict(data[HF_CONFIG_KEY])


def _weights_file(path: str | Path) -> Path:
    file = Path(path)
    return checkpoint_dir(file) / WEIGHTS if file.is_dir() else file


def read_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, read from the safetensors header only (no tensor data is loaded)."""
    file = _weights_file(path)
    try:
        with safe_open(str(file), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read weights {str(file)!r} (truncated or corrupt?): {err}") from err


def check_shapes(cfg: ModelConfig, path: str | Path) -> None:
    """Refuse (CheckpointError) a config whose model would not fit the weights' shapes, before building it.

    The model is built on the meta device (shapes only, no memory), so the check costs milliseconds
    whatever sizes the config claims.
    """
    shapes = read_shapes(path)
    with torch.device("meta"):
        meta_model = build_model(cfg)
    expected = {k: tuple(v.shape) for k, v in meta_model.state_dict().items()}
    wrong = [(k, shapes[k], expected[k]) for k in shapes if k in expected and shapes[k] != expected[k]]
    if wrong:
        raise CheckpointError(
            f"weights {str(_weights_file(path))!r} do not fit {CONFIG} (name, file shape, config shape): "
            f"{wrong[:3]}; was the config edited or saved from a different model?"
        )
    check_memory(meta_model, path)


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes; None where the system does not tell."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(meta_model: LongRangeLM, path: str | Path) -> None:
    """Refuse (CheckpointError) weights whose loading would allocate more than this machine's memory: the model
    `meta_model` describes (built on the meta device: sizes, no memory) plus the tensors read from the file.

    Shapes that agree with an edited ``config.yaml`` pass `check_shapes`, and a sparse file claims any size at no
    cost on disk; without this check such a pair allocates until the system kills the process."""
    limit = memory_bytes()
    if limit is None:
        return
    tensors = {id(t): t for t in (*meta_model.parameters(), *meta_model.buffers())}  # tied weights once
    model = sum(t.numel() * t.element_size() for t in tensors.values())
    file = _weights_file(path)
    stored = file.stat().st_size
    if model + stored > limit:
        gib = 2**30
        raise CheckpointError(
            f"loading {str(file)!r} would allocate {(model + stored) / gib:.1f} GiB (the model {model / gib:.1f} GiB, "
            f"the file's tensors {stored / gib:.1f} GiB), more than this machine's {limit / gib:.1f} GiB of memory; "
            f"was {CONFIG} edited, or is the file not this model's?"
        )


def check_finite(model: LongRangeLM, path: str | Path) -> None:
    """Refuse (CheckpointError) weights holding NaN or infinity, naming the first such tensors."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(
            f"weights {str(_weights_file(path))!r} hold NaN or infinite values in {len(bad)} tensor(s) "
            f"{bad[:3]}; the run diverged before this checkpoint was written (lower the learning rate and retrain)"
        )


def load_weights(model: LongRangeLM, path: str | Path, strict: bool = True) -> list[str]:
    """Load safetensors weights into `model`; returns the names of model tensors the file lacked.

    With ``strict=False`` tensors missing from the file keep their fresh initialisation and tensors
    the model has no place for are skipped (both logged); used to start a memorizing model from a
    transformer-xl checkpoint. Mis-shaped tensors are always an error.
    """
    file = _weights_file(path)
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read weights {str(file)!r} (truncated or corrupt?): {err}") from err
    own = model.state_dict()
    unexpected = sorted(set(tensors) - set(own))
    mismatched = [k for k in tensors if k in own and tensors[k].shape != own[k].shape]
    missing = sorted(k for k in set(own) - set(tensors) if not _is_tied_alias(model, k))
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(
            f"weights {str(file)!r} do not fit this model: unexpected={unexpected[:5]} "
            f"shape mismatch={[(k, tuple(tensors[k].shape), tuple(own[k].shape)) for k in mismatched[:5]]} "
            f"missing={missing[:5]}; was it saved from a different config?"
        )
    if missing or unexpected:
        log.info(
            "loaded %s: %d tensors kept fresh %s, %d skipped %s",
            file,
            len(missing),
            missing[:3],
            len(unexpected),
            unexpected[:3],
        )
    model.load_state_dict({k: v for k, v in tensors.items() if k in own}, strict=False)
    return missing


def _is_tied_alias(model: LongRangeLM, key: str) -> bool:
    return key == "head.weight" and model.head.weight is model.embed.weight


def load(path: str | Path, *, allow_nonfinite: bool = False, **overrides: Any) -> LongRangeLM:
    """Build the model saved in `path` (config + weights). `overrides` change config keys that
    do not affect weights, e.g. ``load(run, **{"knn.memory_size": 8192})``.

    The weights' shapes are checked against the config before the model is allocated, and weights
    that are not finite are refused unless ``allow_nonfinite`` (CheckpointError, one line each).
    """
    cfg = load_config(path)
    if overrides:
        cfg = cfg.replace(**overrides)
    check_shapes(cfg, path)
    model = build_model(cfg)
    load_weights(model, path)
    if not allow_nonfinite:
        check_finite(model, path)
    return model
