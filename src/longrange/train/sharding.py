"""FSDP2 (`torch.distributed.fsdp.fully_shard`) for models larger than one device.

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

_GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
_SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


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
