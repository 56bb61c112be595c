"""Run by torchrun from tests/train/test_distributed.py: every system trains a few steps on 2 processes.

Usage: torchrun --nproc_per_node 2 tests/train/ddp_systems.py DATA OUT SYSTEM[,SYSTEM...]
The process group is started here once, so `train` (which tears down only a group it started) can run
one system after the other in it.
"""

import sys

import torch
import torch.distributed as dist

import longrange
from longrange.train import train
from tests.train.systems import SYSTEMS, system_train_config

if __name__ == "__main__":
    data, out, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    for name in names:
        model_cfg = longrange.ModelConfig.from_name(f"{name}-tiny").replace(**SYSTEMS[name])
        train(model_cfg, system_train_config(device="cpu"), data, f"{out}/{name}")  # gloo, CPU tensors
    dist.destroy_process_group()
