"""torch.distributed set-up for `torchrun`: gloo on CPU, nccl on CUDA; one process per rank.

`DistInfo` is what the trainer needs of the process group: the rank, the world size, and three
collective helpers that are no-ops in a single process (`barrier`, `sum_`, `agree`). `agree` runs a
check on rank 0 and raises its error on every rank, so a refused run folder stops all processes
with the same line instead of leaving the others waiting at a barrier.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this process group was started by `init_distributed` (and is torn down with it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce `tensor` in place (sum over ranks); returns it."""
        if self.enabled:
            dist.all_reduce(tensor)
        return tensor

    def any(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on some rank (e.g. a signal reached one process)."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], device="cpu")  # host-side: gloo (see `process_group_backend`)
        dist.all_reduce(value)
        return bool(value.item())

    def agree(self, fn: Callable[[], T], *, main_only: bool = True) -> T | None:
        """Run `fn` on rank 0 (every rank with ``main_only=False``); an error of any rank is raised on all."""
        result, error = None, None
        if self.is_main or not main_only:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 -- re-raised below, on every rank
                error = err
        if not self.enabled:
            if error is not None:
                raise error
            return result
        errors: list = [None] * self.world_size
        dist.all_gather_object(errors, None if error is None else (type(error), str(error)))
        if error is not None:
            raise error
        for other in errors:
            if other is not None:
                kind, message = other
                raise (kind if issubclass(kind, ValueError) else RuntimeError)(message)
        return result


BACKEND_ENV = "LONGRANGE_DIST_BACKEND"  # "gloo": every collective on gloo, CUDA tensors included


def process_group_backend(device: torch.device) -> str:
    """gloo on the CPU; on CUDA nccl for CUDA tensors (gradients, parameters, metrics) and gloo for the host-side
    ones (a step's token counts, the stop flag), which stay on the CPU so that reading them costs no device sync:
    nccl alone refuses a CPU tensor.

    ``LONGRANGE_DIST_BACKEND=gloo`` puts the CUDA tensors on gloo too: for ranks that share one GPU (each started
    as its own torchrun node, LOCAL_RANK 0), which nccl refuses; slower, a check of the multi-process path on a
    machine with one GPU."""
    chosen = os.environ.get(BACKEND_ENV, "").strip().lower()
    if chosen not in ("", "gloo"):
        raise ValueError(f"{BACKEND_ENV}={chosen!r}: only gloo may be asked for (unset: gloo on the CPU, nccl on CUDA)")
    if chosen == "gloo":
        return "gloo"
    return "cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); a no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    owns_group = not dist.is_initialized()
    if owns_group:
        dist.init_process_group(backend=process_group_backend(device))
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, owns_group)


def shutdown_distributed(info: DistInfo, *, clean: bool = True) -> None:
    """End a run's part in the process group `init_distributed` started (a caller's own group is left alone).

    After a clean run every rank meets at a barrier, so no rank leaves while another still writes. The group
    itself is not destroyed here: with torch 2.13 and gloo, `destroy_process_group` followed by the release of
    DDP's reducer (which holds the group) was seen to hang a rank for good in ~ProcessGroupGloo, joining a
    thread that waits on a peer that has exited. The group goes with the process, as torchrun expects. After
    an error no barrier is tried (it could wait for ranks that will never come); torchrun stops the others.
    """
    if info.owns_group and dist.is_initialized() and clean:
        dist.barrier()
