"""The runtime every command shares: which device, which precision, whether to compile.

`resolve_device` turns a ``--device`` string into a `torch.device` (or one clear error line),
`resolve_precision` decides ``--precision auto`` (bf16 or fp32, by the device and the model),
`autocast_dtype` maps a decided ``--precision`` to the dtype of `torch.autocast` (None: plain fp32), and
`maybe_compile` wraps a model in `torch.compile` when asked, and `configure_device` applies per-device settings
(TF32 on CUDA; on the CPU, `tune_cpu_allocator`). The commands (train, eval, generate, ...) call these instead
of each interpreting the options itself.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PRECISION_CHOICES = ("auto", *PRECISIONS)  # auto: decided by `resolve_precision`
# `--precision auto` keeps fp32 for models narrower than this, and for these attention kinds (see resolve_precision)
AUTO_BF16_MIN_WIDTH = 256
AUTO_FP32_KINDS = frozenset({"luna"})
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 matrix instructions

log = logging.getLogger(__name__)


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``"cpu" | "cuda" | "cuda:N" | "auto"`` -> a device that exists here; ValueError (one line) otherwise.

    ``auto`` picks a CUDA device when there is one, else the CPU. Under torchrun (`local_rank` of
    this process on its node) ``cuda`` and ``auto`` mean this process's own GPU, ``cuda:local_rank``.
    """
    text = str(spec).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    if text == "cuda" and torch.cuda.is_available():
        text = f"cuda:{local_rank}"
    kind, _, index = text.partition(":")
    if kind == "cpu" and not index:
        return torch.device("cpu")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"--device {spec!r} is not one of {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        why = "this PyTorch build has no CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ValueError(f"--device {spec!r}: {why}; use --device cpu (or auto)")
    count = torch.cuda.device_count()
    if index and int(index) >= count:
        raise ValueError(f"--device {spec!r}: only {count} CUDA device(s) here (cuda:0 .. cuda:{count - 1})")
    return torch.device("cuda", int(index) if index else 0)


def configure_device(device: torch.device) -> None:
    """Per-device settings: TF32 matmuls and convolutions on CUDA (fp32 range, ~10-bit mantissa: the
    usual training trade, as PyTorch's own recipes and litgpt set it); on the CPU, `tune_cpu_allocator`."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        tune_cpu_allocator()


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


@functools.cache
def tune_cpu_allocator() -> bool:
    """Let glibc's malloc keep freed tensor memory for reuse; returns whether it was applied.

    By default glibc serves an allocation above its mmap threshold (128 KiB, raised as large blocks are freed, to
    at most 32 MiB) with fresh pages from the kernel and gives them back on free, and trims the heap above 128 KiB
    of free space. A training step allocates and frees the same large activations every step (attention scores,
    gathered kNN pairs), so every step paid page faults to get zeroed pages again: gathering 131,072 kNN rows into a
    fresh 33 MB tensor took 14.7 ms, into a reused one 3.4 ms, and a memorizing training step (d 512, L 1,024, 2
    threads) went from 851 to 938 tokens/s with this tuning. The thresholds set are the mmap threshold at its
    32 MiB maximum and a trim threshold of 1 GiB (what the process keeps of freed heap memory at most), the tuning
    that PyTorch's CPU performance guide gets from jemalloc or tcmalloc. Only glibc on Linux has these knobs;
    elsewhere, or with ``LONGRANGE_MALLOC_TUNING=0``, nothing is changed.
    """
    if os.environ.get("LONGRANGE_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, 32 << 20) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1


def cpu_bf16_flags(cpuinfo: str) -> list[str]:
    """The native bf16 matrix features (`CPU_BF16_FLAGS`) among the flags of `/proc/cpuinfo` text."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return [flag for flag in CPU_BF16_FLAGS if flag in flags]


@functools.cache
def fast_bf16(device: torch.device) -> str | None:
    """Why `device` has fast bf16 matrix products (e.g. "CPU flags amx_bf16 avx512_bf16"), or None when it has
    not; detected once per device and process.

    CUDA: compute capability 8.0 or newer (Ampere on: bf16 tensor cores; older GPUs emulate bf16). CPU: AMX-BF16
    or AVX512-BF16 in /proc/cpuinfo's flags (Linux; elsewhere None) and a PyTorch with oneDNN, which runs bf16
    matrix products on them (about 6x fp32's rate with AMX on 2 threads: 1,734 against 255 GFLOP/s at
    1024 x 512 x 2048). AVX512 without BF16 converts bf16 in software, no faster than fp32. Other devices: None.
    """
    device = torch.device(device)
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"CUDA compute capability {major}.{minor}" if major >= 8 else None
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        flags = cpu_bf16_flags(Path("/proc/cpuinfo").read_text())
    except OSError:
        return None
    return f"CPU flags {' '.join(flags)}" if flags else None


def resolve_precision(precision: str, device: torch.device, model: Any = None, *, fast: bool | None = None) -> str:
    """``--precision`` decided: "fp32", "bf16" or "fp16" as given; ``auto`` by the device and the model.

    ``auto`` is bf16 autocast where the device has fast bf16 matrix products (`fast_bf16`; ``fast`` overrides
    the detection, for tests) and the model (a `ModelConfig`, or None for work without a model, such as a kNN
    search) is one bf16 trains faster; else fp32. It keeps fp32 for:
    - models narrower than `AUTO_BF16_MIN_WIDTH` (256): at d_model 64 bf16 trained slower than fp32 on a CPU with
      AMX (the tiny presets, 300 updates of 8 x 64, 2 threads: transformer 43,569 against 49,165 tokens/s, XL
      39,667 against 40,485, memorizing 20,613 against 20,131), the autocast casts costing more than the small
      matrix products gain; at d_model 512 bf16 trained 1.8-1.9x faster (transformer, L = 1,024);
    - Luna (`AUTO_FP32_KINDS`) at every width: its causal prefix sums run in fp32 under autocast too (for their
      accuracy), so bf16 adds casts to them and Luna-tiny trained 2.1x slower in bf16 (13,746 against 29,489).
    Each decision is logged once per process. Callers that record a run store the decided value, so a run
    resumed on another machine keeps the precision it started with.
    """
    if precision != "auto":
        autocast_dtype(precision)  # one line for an unknown name
        return precision
    reason = fast_bf16(torch.device(device)) if fast is None else ("fast bf16 assumed" if fast else None)
    kinds = sorted(AUTO_FP32_KINDS & set(getattr(model, "layers", ())))
    width = getattr(model, "d_model", None)
    if reason is None:
        choice, why = "fp32", f"no fast bf16 matrix products on {torch.device(device)}"
    elif kinds:
        choice, why = "fp32", f"{', '.join(kinds)} attention trains slower in bf16 ({reason})"
    elif width is not None and width < AUTO_BF16_MIN_WIDTH:
        choice, why = "fp32", f"d_model {width} < {AUTO_BF16_MIN_WIDTH} trains slower in bf16 ({reason})"
    else:
        choice, why = "bf16", reason
    _report_precision(choice, why)
    return choice


@functools.cache
def _report_precision(choice: str, why: str) -> None:
    log.info("precision auto: %s (%s)", choice, why)


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a decided ``--precision`` ("fp32": None, no autocast; "bf16"; "fp16")."""
    if precision == "auto":
        raise ValueError("--precision auto must be decided first (longrange.runtime.resolve_precision)")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision {precision!r} is not one of {list(PRECISION_CHOICES)}")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str):
    """A `torch.autocast` context for `precision` on `device` (disabled for fp32)."""
    dtype = autocast_dtype(precision)
    return torch.autocast(device_type=device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def maybe_compile(model: nn.Module, enabled: bool) -> nn.Module:
    """`torch.compile(model)` when `enabled`, else `model` itself. The compiled wrapper shares the
    parameters and forwards attribute reads to the model, so callers may keep using either."""
    return torch.compile(model) if enabled else model


def add_runtime_options(parser: argparse.ArgumentParser, *, compile: bool = True) -> None:
    """``--device``, ``--precision`` (and ``--compile``): the same options, with the same help, in every command."""
    parser.add_argument("--device", default="auto", help=f"{DEVICE_CHOICES} (default auto: CUDA when available)")
    parser.add_argument(
        "--precision",
        default="auto",
        choices=PRECISION_CHOICES,
        help="auto (default: bf16 autocast where the device has fast bf16 matrix products and the model trains "
        f"faster in it: d_model >= {AUTO_BF16_MIN_WIDTH}, not {', '.join(sorted(AUTO_FP32_KINDS))}; else fp32), "
        "fp32, or autocast to bf16 / fp16 (training adds a gradient scaler for fp16)",
    )
    if compile:
        parser.add_argument("--compile", action="store_true", help="run the model through torch.compile")


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work (timing); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float | None:
    """Peak allocated memory of a CUDA device since start (None on the CPU: measured per process by the benches)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return None
