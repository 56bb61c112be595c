"""Checkpoints: safetensors weights + config.yaml + train.yaml + one trainer shard per rank, written atomically.

A checkpoint folder holds::

    model.safetensors, config.yaml   the weights and the model config (`longrange.load` reads these)
    train.yaml                       the training config
    meta.json                        step, world size, held-out loss (when measured)
    trainer.pt                       rank 0's trainer state: optimiser, step, data cursors, RNG states, memories
    trainer-rank{r}.pt               the same for rank r > 0 (its own data rows, memories and RNG states)

Trainer shards hold only tensors and plain containers and are read with
``torch.load(weights_only=True)``, so a checkpoint from an untrusted source cannot run code.

A checkpoint is written into ``checkpoint.tmp`` and swapped in by rename: a run killed at any moment
leaves a whole checkpoint behind. The swap keeps the previous newest one as ``checkpoint-step-N``
(the last ``keep`` are kept, as Hugging Face's ``save_total_limit``); ``checkpoint-best`` is the one
with the lowest held-out loss when the trainer validates periodically.
"""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from longrange.model.io import CONFIG, WEIGHTS, CheckpointError, checkpoint_dir, load_weights, save
from longrange.train.run_folder import remove_run_path

TRAINER_STATE = "trainer.pt"
TRAIN_CONFIG = "train.yaml"
META = "meta.json"
LATEST = "checkpoint"
BEST = "checkpoint-best"
_OLDER = "checkpoint-step-"
# what every trainer shard holds (rank 0's also the optimiser state); `Trainer.save` writes these
TRAINER_KEYS = ("step", "stream", "rng_cpu", "rng_cuda", "model_state")


def shard_name(rank: int) -> str:
    return TRAINER_STATE if rank == 0 else f"trainer-rank{rank}.pt"


_fault_counts: dict[str, int] = {}


def _fault_point(name: str) -> None:
    """Fault injection for the kill tests: ``LONGRANGE_FAULT_AT=name:N`` SIGKILLs this process the N-th time
    it reaches point `name` (on rank 0, which writes the weights and swaps the folder)."""
    target, _, count = os.environ.get("LONGRANGE_FAULT_AT", "").partition(":")
    if target != name:
        return
    _fault_counts[name] = _fault_counts.get(name, 0) + 1
    if _fault_counts[name] == int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def _fsync_dir(path: Path) -> None:
    for f in path.iterdir():
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())


def _write_error(err: Exception, path: Path, kept: Path | None) -> CheckpointError:
    """One line for a failed write, saying which checkpoint is kept (`kept`, None: there is none yet); torch's zip
    writer reports a full disk as 'unexpected pos'."""
    free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    full = isinstance(err, OSError) and err.errno == errno.ENOSPC
    reason = "the disk is full" if full or free < (64 << 20) else str(err).splitlines()[0]
    if kept is None:
        left = "no checkpoint of this run is on disk yet (the unfinished one was removed)"
    else:
        left = f"the previous checkpoint is kept: {str(kept)!r} (step {read_meta(kept).get('step', '?')})"
    return CheckpointError(f"cannot write checkpoint {str(path)!r}: {reason} ({free / 2**20:.0f} MiB free); {left}")


def write_checkpoint(
    out_dir: Path,
    model,
    train_config: dict,
    trainer_state: dict,
    *,
    rank: int = 0,
    world_size: int = 1,
    meta: dict | None = None,
    keep: int = 2,
    name: str = LATEST,
    barrier: Callable[[], None] = lambda: None,
    weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``out_dir/name`` atomically, every rank its own trainer shard; returns its path.

    Called by every rank with the same arguments but its own `trainer_state`; rank 0 writes the
    weights and swaps the folder in once every shard is on disk. ``keep`` counts the newest
    checkpoint too (``keep=1``: only the newest). ``weights``: the full weights gathered from a sharded
    model (FSDP), written instead of `model`'s own.
    """
    final, tmp = out_dir / name, out_dir / f"{name}.tmp"
    swapping = False
    try:
        if rank == 0:
            remove_run_path(tmp)  # a leftover, or a link planted there: removed itself, never followed
            tmp.mkdir()  # a new folder of our own (fails if something took the name meanwhile)
            if weights is None:
                save(model, tmp)
            else:
                model.config.to_file(tmp / CONFIG)
                save_file(_untied(weights), str(tmp / WEIGHTS))
            (tmp / TRAIN_CONFIG).write_text(yaml.safe_dump(train_config, sort_keys=False))
            (tmp / META).write_text(json.dumps({**(meta or {}), "world_size": world_size}))
            _fault_point("checkpoint-weights")
        barrier()
        torch.save(trainer_state, tmp / shard_name(rank))
        barrier()
        if rank == 0:
            _fault_point("checkpoint-shards")
            _fsync_dir(tmp)
            swapping = True  # from here the folder is whole: a failure leaves it for `find_checkpoint`'s order
            _swap_in(out_dir, tmp, final, keep if name == LATEST else 1)
    except (OSError, RuntimeError) as err:
        if rank == 0 and not swapping:  # a half-written folder only fills the disk that may just have run out
            try:
                remove_run_path(tmp)
            except OSError:
                pass
        kept = final if (final / TRAINER_STATE).is_file() else find_checkpoint(out_dir) if name == LATEST else None
        raise _write_error(err, tmp, kept) from err
    barrier()
    return final


def _swap_in(out_dir: Path, tmp: Path, final: Path, keep: int) -> None:
    if final.exists():
        step = read_meta(final).get("step")
        if keep > 1 and step is not None:
            os.replace(final, out_dir / f"{_OLDER}{int(step):08d}")
        else:
            old = out_dir / f"{final.name}.old"
            remove_run_path(old)
            os.replace(final, old)
        _fault_point("checkpoint-swap")
    os.replace(tmp, final)
    shutil.rmtree(out_dir / f"{final.name}.old", ignore_errors=True)
    older = older_checkpoints(out_dir)
    for stale in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(stale, ignore_errors=True)


def older_checkpoints(out_dir: Path) -> list[Path]:
    """The kept older checkpoints, oldest first."""
    return sorted(p for p in out_dir.glob(f"{_OLDER}*") if (p / TRAINER_STATE).is_file())


def read_meta(path: Path) -> dict:
    try:
        return json.loads((path / META).read_text())
    except (OSError, ValueError):
        return {}


def find_checkpoint(out_dir: Path) -> Path | None:
    """The newest whole checkpoint of a run: ``checkpoint/``, else (killed mid-swap) the newest older one."""
    for path in (out_dir / LATEST, out_dir / f"{LATEST}.old", *reversed(older_checkpoints(out_dir))):
        if (path / TRAINER_STATE).is_file():
            return path
    return None


def _untied(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): keep one name, as `save_model` does."""
    seen: dict[int, str] = {}
    out = {}
    for name, tensor in weights.items():
        if tensor.data_ptr() in seen:
            continue
        seen[tensor.data_ptr()] = name
        out[name] = tensor.contiguous()
    return out


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(checkpoint_dir(path) / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read weights in {str(path)!r} (truncated or corrupt?): {err}") from err


def read_checkpoint(path: Path, model, rank: int = 0, world_size: int = 1) -> dict:
    """Load weights into `model` (None: leave them) and return this rank's trainer state; clear errors for bad files."""
    saved_world = read_meta(path).get("world_size", 1)
    if saved_world != world_size:
        raise CheckpointError(
            f"{str(path)!r} was written by {saved_world} process(es), this run has {world_size}: resume with "
            f"`torchrun --nproc_per_node {saved_world} ...` (the data rows and memories are per process), "
            "or start a new run from its weights"
        )
    if model is not None:
        load_weights(model, checkpoint_dir(path))
    shard = path / shard_name(rank)
    if not shard.is_file():
        raise CheckpointError(f"{str(path)!r} lacks {shard.name} (the trainer state of rank {rank})")
    try:
        state = torch.load(shard, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"refusing {str(shard)!r}: it holds objects other than tensors and plain data "
            f"(loading it could run code): {str(err).splitlines()[0]}"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"cannot read {str(shard)!r} (truncated or corrupt?): {err}") from err
    required = TRAINER_KEYS + (("optimizer",) if rank == 0 else ())
    lacking = [key for key in required if key not in state] if isinstance(state, dict) else list(required)
    if lacking:
        raise CheckpointError(
            f"{str(shard)!r} is not a whole trainer state (it lacks {', '.join(lacking)}), so the run cannot "
            f"continue exactly; the weights beside it are kept: start a new run from them with --init-from {path}"
        )
    return state
