"""Speed and peak memory of attention variants vs sequence length.

Each (variant, length) point runs in a fresh subprocess, so its peak memory is its own: on CPU
the growth of the process's peak resident set (``ru_maxrss``) over the level measured just before
the input is created; on CUDA ``torch.cuda.max_memory_allocated``. Time is the median of
`repeats` forward+backward passes after one warm-up, under the autocast of ``precision`` (fp32: none; bf16 or
fp16: the module's matrix products in that dtype, its weights and input kept in fp32, as a training step under
``--precision bf16`` runs them). Ratios are against ``full`` at the same length, measured in the same run (`sweep`);
a variant that ran out of time or memory at one length is not tried at the longer ones.
`reversible_growth` measures reversible against plain stacks.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from longrange.bench.report import BASELINE, add_ratios
from longrange.bench.variants import VARIANTS
from longrange.runtime import autocast


def measure(
    variant: str,
    length: int,
    d_model: int,
    heads: int,
    batch: int,
    causal: bool,
    repeats: int,
    device: str,
    precision: str = "fp32",
) -> dict:
    """One point, in this process: {"time_s", "peak_mib"}; ``precision`` a decided one (fp32, bf16, fp16)."""
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
        with autocast(torch.device(device), precision):
            out = run(module, x)
        out.float().sum().backward()
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
        if done.returncode in (-9, 137) or "OutOfMemoryError" in done.stderr:  # killed by the OS, or CUDA's
            return {**point, "status": "out of memory"}
        return {**point, "status": f"failed: {done.stderr.strip().splitlines()[-1:]}"}
    return {**point, **json.loads(done.stdout.strip().splitlines()[-1]), "status": "ok"}


def sweep(
    variants: list[str],
    lengths: list[int],
    *,
    d_model: int,
    heads: int,
    batch: int,
    causal: bool,
    repeats: int,
    device: str,
    threads: int,
    timeout: float,
    baseline_max_length: int,
    on_row: Callable[[dict], None] | None = None,
    precision: str = "fp32",
) -> list[dict]:
    """Every (variant, length) point in a fresh process, the baseline (full attention) included up to
    `baseline_max_length` (quadratic time); rows with ratios against the baseline. `on_row` sees each row as it
    is measured. A variant whose point failed (a timeout, out of memory) gets a "not run" row at the longer
    lengths instead of costing their timeouts too; `lengths` are taken in increasing order."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; choose from {sorted(VARIANTS)}")
    variants = variants if BASELINE in variants else [BASELINE, *variants]
    rows = []
    failed: dict[str, int] = {}  # variant -> the length its point failed at
    for length in sorted(lengths):
        for variant in variants:
            if variant == BASELINE and length > baseline_max_length:
                continue
            point = {
                "variant": variant,
                "length": length,
                "d_model": d_model,
                "heads": heads,
                "batch": batch,
                "causal": causal,
                "repeats": repeats,
                "device": device,
                "precision": precision,
            }
            if variant in failed:
                rows.append({**point, "status": f"not run: failed at length {failed[variant]}"})
            else:
                rows.append(measure_in_subprocess(point, threads, timeout))
                if rows[-1]["status"] != "ok":
                    failed[variant] = length
            if on_row is not None:
                on_row(rows[-1])
    add_ratios(rows)
    return rows


def reversible_growth(
    length: int, d_model: int, heads: int, threads: int, timeout: float, on_row: Callable[[dict], None] | None = None
) -> tuple[list[dict], dict]:
    """Peak memory of reversible and plain Reformer stacks at depth 2, 4 and 8 (a fresh process per point), and
    each one's growth from depth 2 to 8 with their ratio (the reversible stack should barely grow)."""
    rows = []
    for kind in ("reversible", "plain"):
        for depth in (2, 4, 8):
            point = {
                "variant": f"{kind}-depth{depth}",
                "length": length,
                "d_model": d_model,
                "heads": heads,
                "batch": 1,
                "causal": True,
                "repeats": 1,
                "device": "cpu",
            }
            rows.append(measure_in_subprocess(point, threads, timeout))
            if on_row is not None:
                on_row(rows[-1])
    growth = {}
    for kind in ("reversible", "plain"):
        peaks = {r["variant"]: r.get("peak_mib") for r in rows if r["variant"].startswith(kind)}
        if peaks.get(f"{kind}-depth2") is not None and peaks.get(f"{kind}-depth8") is not None:
            growth[kind] = peaks[f"{kind}-depth8"] - peaks[f"{kind}-depth2"]
    if len(growth) == 2:
        growth["ratio"] = growth["reversible"] / max(growth["plain"], 1e-9)
    return rows, growth


def main() -> None:  # the subprocess side
    parser = argparse.ArgumentParser()
    parser.add_argument("point")
    parser.add_argument("threads", type=int)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(json.dumps(measure(**json.loads(args.point))))


if __name__ == "__main__":
    main()
