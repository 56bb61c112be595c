"""The six systems at a size that trains in a second, shared by the distributed and precision tests."""

import os
from pathlib import Path

from longrange.train import TrainConfig

ROOT = Path(__file__).resolve().parents[2]

# overrides of each `{name}-tiny` preset: short segments, small memories and buckets
SYSTEMS: dict[str, dict] = {
    "transformer": {},
    "transformer-xl": {"xl.mem_len": 16},
    "reformer": {"segment_len": 32, "lsh.n_buckets": 4, "lsh.bucket_size": 8, "local.chunk_len": 8},
    "luna": {},
    "compressive": {"compressive.mem_len": 8, "compressive.cmem_len": 4, "compressive.rate": 2},
    "memorizing": {"xl.mem_len": 16, "knn.mem_len": 16, "knn.memory_size": 64, "knn.topk": 4},
}


def system_train_config(**overrides) -> TrainConfig:
    """4 rows of 16 tokens, 4 updates; no clipping or dropout noise, so 2 processes == 1 within float error."""
    base = dict(steps=4, batch_size=4, segment_len=16, lr=1e-2, warmup_steps=0, grad_clip=0.0, log_every=1)
    base.update(checkpoint_every=2, eval_segments=1, progress=False, seed=1, precision="fp32")  # float error only
    return TrainConfig(**{**base, **overrides})


def torchrun_command(nproc: int = 2) -> list[str]:
    """`python -m torch.distributed.run` on a free port (fixed ports collide when test runs overlap)."""
    import socket
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port)]


def cpu_subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a test's CLI or torchrun subprocess: one thread, this checkout's code, and no GPU (the
    multi-process tests compare gloo ranks on the CPU; on a one-GPU machine two NCCL ranks would share its card,
    and `--device auto` would put the one-process reference on the GPU while the ranks stay on the CPU)."""
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path, "CUDA_VISIBLE_DEVICES": "", **extra}
