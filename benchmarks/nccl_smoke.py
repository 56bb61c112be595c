"""The process group a CUDA run of longrange uses, under torchrun: "cpu:gloo,cuda:nccl", with a collective on a
CUDA tensor (nccl) and on a CPU tensor (gloo, the trainer's host-side token counts and stop flag).

  python -m torch.distributed.run --standalone --nproc_per_node 1 benchmarks/nccl_smoke.py
Exits 0 and prints one line per rank when both collectives give the sum over the ranks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from longrange.train.distributed import process_group_backend


def main() -> None:
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    backend = process_group_backend(device)
    dist.init_process_group(backend=backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    on_gpu = torch.full((4,), float(rank + 1), device=device)
    on_cpu = torch.tensor([float(rank + 1)])
    dist.all_reduce(on_gpu)
    dist.all_reduce(on_cpu)
    expected = world * (world + 1) / 2
    assert torch.all(on_gpu == expected).item() and on_cpu.item() == expected, (on_gpu, on_cpu)
    dist.barrier()
    print(f"rank {rank} of {world}: {backend} all-reduce on {device} and on the CPU = {expected:g}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
