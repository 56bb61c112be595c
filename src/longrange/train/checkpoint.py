"""Checkpoints: safetensors weights + config.yaml + train.yaml + trainer.pt, written atomically.

``trainer.pt`` holds only tensors and plain containers (optimizer state, step, data-stream
cursors, RNG states, the carried memories) and is read with ``torch.load(weights_only=True)``, so a
checkpoint from an untrusted source cannot run code. A checkpoint directory is written into a
temporary sibling and swapped in by rename: a run killed at any moment leaves the previous
checkpoint (or the new one) whole.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import torch
import yaml

from longrange.model.io import CheckpointError, checkpoint_dir, load_weights, save

TRAINER_STATE = "trainer.pt"
TRAIN_CONFIG = "train.yaml"


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def write_checkpoint(out_dir: Path, model, train_config: dict, trainer_state: dict) -> Path:
    """Write ``out_dir/checkpoint`` atomically; returns its path."""
    final = out_dir / "checkpoint"
    tmp = out_dir / "checkpoint.tmp"
    old = out_dir / "checkpoint.old"
    shutil.rmtree(tmp, ignore_errors=True)
    save(model, tmp)
    (tmp / TRAIN_CONFIG).write_text(yaml.safe_dump(train_config, sort_keys=False))
    torch.save(trainer_state, tmp / TRAINER_STATE)
    _fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(out_dir: Path) -> Path | None:
    """The newest whole checkpoint of a run (``checkpoint/``, or ``checkpoint.old/`` mid-swap)."""
    for name in ("checkpoint", "checkpoint.old"):
        path = out_dir / name
        if (path / TRAINER_STATE).is_file():
            return path
    return None


def read_checkpoint(path: Path, model) -> dict:
    """Load weights into `model` and return the trainer state; clear errors for bad files."""
    load_weights(model, checkpoint_dir(path))
    try:
        return torch.load(path / TRAINER_STATE, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing {str(path / TRAINER_STATE)!r}: it holds objects other than tensors and plain data "
            f"(loading it could run code): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"cannot read {str(path / TRAINER_STATE)!r} (truncated or corrupt?): {err}") from err
