"""Speed and peak memory of attention variants vs sequence length.

Each (variant, length) point runs in a fresh subprocess, so its peak memory is its own: on CPU
the growth of the process's peak resident set (``ru_maxrss``) over the level measured just before
the input is created; on CUDA ``torch.cuda.max_memory_allocated``. Time is the median of
`repeats` forward+backward passes after one warm-up. Ratios are against ``full`` at the same
length, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from longrange.bench.variants import VARIANTS


def measure(
    variant: str, length: int, d_model: int, heads: int, batch: int, causal: bool, repeats: int, device: str
) -> dict:
    """One point, in this process: {"time_s", "peak_mib"}."""
    torch.manual_seed(0)
    module, run = VARIANTS[variant](d_model, heads, causal)
    module = module.to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    x = torch.randn(batch, length, d_model, device=device, requires_grad=True)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        run(module, x).sum().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:  # the first pass is a warm-up
            times.append(time.perf_counter() - start)
        x.grad = None
        module.zero_grad(set_to_none=True)
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base_kib) / 1024
    return {"time_s": statistics.median(times), "peak_mib": peak}


def measure_in_subprocess(point: dict, threads: int, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "longrange.bench.attention", json.dumps(point), str(threads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**point, "status": f"timeout>{timeout:.0f}s"}
    if done.returncode != 0:
        reason = "out of memory" if done.returncode in (-9, 137) else done.stderr.strip().splitlines()[-1:]
        return {**point, "status": f"failed: {reason}"}
    return {**point, **json.loads(done.stdout.strip().splitlines()[-1]), "status": "ok"}


def main() -> None:  # the subprocess side
    parser = argparse.ArgumentParser()
    parser.add_argument("point")
    parser.add_argument("threads", type=int)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(**json.loads(args.point))))


if __name__ == "__main__":
    main()
