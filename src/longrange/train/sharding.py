"""How a model is spread over the ranks of a torchrun launch: DDP replicas, or FSDP2 shards for models larger than
one device (`spread_over_ranks`).

With ``--shard fsdp`` under torchrun every block is its own FSDP unit and the model the root one:
parameters, gradients and optimiser state are split across ranks and each block's parameters are
gathered only while it runs. Checkpoints stay the same files as for one process (one full
safetensors file, written by rank 0), so a sharded run is evaluated, sampled and fine-tuned like any
other; the full state is gathered to rank 0's CPU to write it and scattered from it to read it
(`torch.distributed.checkpoint.state_dict` with ``full_state_dict``). Every function here is a
collective: all ranks call it.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from longrange.train.distributed import DistInfo

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def spread_over_ranks(
    model: nn.Module, dist: DistInfo, device: torch.device, shard: str
) -> DistributedDataParallel | None:
    """Under torchrun: with ``shard="fsdp"`` shard `model` in place (before its optimiser is built: the optimiser
    must hold the sharded parameters) and return None; else the DDP replica that averages the gradients. None in one
    process."""
    if not dist.enabled:
        return None
    if shard == "fsdp":
        shard_model(model)
        return None
    # a stateful model leaves parameters unused in some steps (the kNN gate while its memory is empty, the
    # compression weights before anything is evicted): DDP must look for them or it waits for their gradients
    return DistributedDataParallel(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=model.stateful,
    )


def shard_model(model: nn.Module) -> nn.Module:
    """Shard `model` in place: one FSDP unit per block, the rest (embeddings, head) in the root unit."""
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def full_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (an empty dict on the other ranks)."""
    return get_model_state_dict(model, options=_GATHER)


def load_full_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Scatter rank 0's full `weights` into the shards (the other ranks pass an empty dict)."""
    set_model_state_dict(model, weights, options=_SCATTER)


def full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return get_optimizer_state_dict(model, optimizer, options=_GATHER)


def load_full_optimizer_state(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    set_optimizer_state_dict(model, optimizer, state, options=_SCATTER)


def local_value(tensor: torch.Tensor) -> torch.Tensor:
    """A plain tensor of a (possibly sharded) result, e.g. the gradient norm `clip_grad_norm_` returns."""
    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
