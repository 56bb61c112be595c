"""Native (C) kernel of the causal-exact LSH attention: the fastest CPU path of `longrange.attention.lsh.layer`.

Shape legend: BH rows (batch x heads), Tp padded tokens, H heads, E head width, R hash rounds,
S = R * Tp sorted items of a row.

It computes exactly what the fused PyTorch kernel (`kernel_torch`) computes, and takes the same inputs:
each sorted query sees the keys of its band [lo, hi] of sorted items (its own bucket, at most C items
away, not after it when causal), its own key at q.k/sqrt(E) + SELF_SCORE, minus log(number of rounds the
pair shares a bucket) with the correction; the rounds are merged with weights softmax(logsumexp). The
difference is how: `csrc/lsh_band.c` loops over exactly each query's band (27 keys on average at 64K with
C = 64, where a block layout scores C + C / 2 = 96), reads the rows of the projections in place, makes the
unit keys from the queries and their norms as it goes, and sums each row's gradients in its own compact
scratch: no gathered copies, no score or bias tensors, no scatters, no key tensor. It keeps for the
backward pass the inputs, the output, the norms and one logsumexp per item (memory O(S) beyond the
inputs), and recomputes the scores, as the fused kernel does (timings: benchmarks/README.md,
"attention/lsh/kernel_native.py").

Why C and not a PyTorch op: no PyTorch operator visits a variable band per query; every composition of
dense ones pays for the whole window and the copies around it (`kernel_torch` is the best one found).
The C source is compiled on first use with the system's C compiler (``cc``, or ``$CC``) into a per-user
cache and loaded with ctypes (no Python headers or build step needed). A built file gets mode 0700 whatever the
umask; a cached file is checked with lstat (owner, no group/other write, not a symbolic link) and a refused one
is removed and rebuilt, so a loose umask never leaves the slow kernel in use for good. Every folder above the
cache must be this user's or root's and writable by nobody else unless sticky (/tmp), or the cache is not used.
Rows run in ``torch.get_num_threads()`` threads (ctypes releases the GIL). Without a compiler, or with
``LONGRANGE_NATIVE=0``, `available()` is False and the fused PyTorch kernel is used: same results.
Float32 and float64 tensors on the CPU are supported.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from longrange.attention.lsh.scores import NORM_EPS, SELF_SCORE

SOURCE = Path(__file__).with_name("csrc") / "lsh_band.c"
FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-ffp-contract=fast", "-fno-strict-aliasing", "-fPIC", "-shared"]
SCALARS = {torch.float32: "float", torch.float64: "double"}


@torch.compiler.assume_constant_result  # torch.compile asks once, outside the graph (it stats the kernel cache)
def available(dtype: torch.dtype = torch.float32, head_dim: int = 0) -> bool:
    """Whether the native kernel can run tensors of `dtype` here (compiling it on first use, for heads of
    `head_dim` values; 0: the build for any width)."""
    return dtype in SCALARS and _library(SCALARS[dtype], head_dim) is not None


def cache_dirs() -> list[Path]:
    """Where compiled kernels are kept: $LONGRANGE_CACHE, else the user's cache folder; a private folder in
    the temporary directory when that one cannot be written (a read-only home, say)."""
    root = os.environ.get("LONGRANGE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "longrange"
    )
    return [Path(root) / "kernels", Path(tempfile.gettempdir()) / f"longrange-kernels-{os.getuid()}"]


def _check_private(path: Path) -> None:
    """Refuse a file or folder that another user owns or could write (a library there could be replaced), or a
    symbolic link (checked with lstat, so a link to a file in a world-writable folder is never followed)."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        raise OSError(f"{path} is a symbolic link, not a file of this user's kernel cache")
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise OSError(f"{path} is not private to this user (owner {info.st_uid}, mode {oct(info.st_mode & 0o777)})")


def _check_ancestors(folder: Path) -> None:
    """Refuse a cache folder below a folder where another user could swap what lies beneath it: every existing
    folder above it (as written, and as its links resolve) must belong to this user or to root and be writable
    by nobody else, unless it is sticky as /tmp is (there others cannot rename or remove what is not theirs); the
    owner of / counts as root (in a container it may be another id).
    A link on the way must belong to this user or root (the folder holding it is checked as well)."""
    folder = Path(os.path.abspath(folder))
    resolved = folder.resolve()
    trusted = {os.getuid(), 0, os.stat("/").st_uid}  # the owner of / could replace anything anyway (containers)
    for above in (*folder.parents, *resolved.parents):
        try:
            info = os.lstat(above)
        except FileNotFoundError:
            continue  # made by `_make_private_folders`
        if info.st_uid not in trusted:
            raise OSError(f"{above}, a folder above the kernel cache, belongs to another user ({info.st_uid})")
        if stat.S_ISDIR(info.st_mode) and info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise OSError(
                f"{above}, a folder above the kernel cache, can be written by others (mode "
                f"{oct(info.st_mode & 0o7777)}, not sticky): the cache could be replaced from there"
            )


def _make_private_folders(folder: Path) -> None:
    """Create `folder` and any missing folder above it with mode 0700 (``mkdir(parents=True)`` would give the
    folders above the umask's mode, 0775 under umask 002)."""
    missing = []
    for above in (folder, *folder.parents):
        if os.path.lexists(above):
            break
        missing.append(above)
    for new in reversed(missing):
        new.mkdir(mode=0o700, exist_ok=True)


def _usable(target: Path) -> bool:
    """Whether a built kernel may be loaded as it is. One that is refused (a link, a loose mode such as the 0775
    an older build left under umask 002, another owner) is removed so that it is rebuilt privately."""
    if not os.path.lexists(target):
        return False
    try:
        _check_private(target)
        return True
    except OSError as error:
        logging.getLogger(__name__).warning("rebuilding the native LSH kernel: %s", error)
        target.unlink()  # the link itself, never what it points to; the folder is ours (checked before)
        return False


@cache
def _library(scalar: str, head_dim: int) -> ctypes.CDLL | None:
    """Compile (once per source, flags and CPU) and load the kernel for one scalar type and head width (loops
    over a known width are unrolled and keep their accumulators in registers; 0: any width); None if impossible."""
    if os.environ.get("LONGRANGE_NATIVE", "1") == "0":
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        warnings.warn("no C compiler found: LSH attention uses its PyTorch kernel (slower)", stacklevel=3)
        return None
    flags = [*FLAGS, f"-DREAL={scalar}", f"-DHEAD_DIM={head_dim}"]
    errors = []
    try:  # a missing source file (a broken install) or a system without getuid: fall back, do not fail
        key = hashlib.sha256(SOURCE.read_bytes() + " ".join([compiler, *flags]).encode() + _cpu().encode())
        folders = cache_dirs()
    except (OSError, AttributeError) as error:
        folders, errors = [], [str(error)]
    for folder in folders:
        target = folder / f"lsh_band_{scalar}_e{head_dim}_{key.hexdigest()[:16]}.so"
        try:
            _check_ancestors(target.parent)
            if target.parent.exists():
                _check_private(target.parent)  # before touching anything in it
            if not _usable(target):
                _compile(compiler, flags, target)
            _check_private(target.parent), _check_private(target)
            library = ctypes.CDLL(str(target))
            break
        except (OSError, subprocess.CalledProcessError) as error:
            errors.append(getattr(error, "stderr", "") or str(error))
    else:
        reason = "; ".join(errors)
        warnings.warn(f"the native LSH kernel could not be built ({reason}); using the PyTorch kernel", stacklevel=3)
        return None
    pointer, integer, number = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    library.lsh_band_forward.argtypes = [pointer] * 9 + [integer] * 6 + [number] * 3
    library.lsh_band_backward.argtypes = [pointer] * 12 + [integer] * 6 + [number] * 3
    for function in (library.lsh_band_forward, library.lsh_band_backward):
        function.restype = ctypes.c_int
    return library


def _compile(compiler: str, flags: list[str], target: Path) -> None:
    """Build into a scratch folder beside target, then rename: parallel processes (test workers) never load a
    half-written library. Folders are made private (0700); `_library` loads only from a folder and a file that
    this user owns and nobody else can write, so a library another user could plant is never loaded."""
    _make_private_folders(target.parent)
    _check_ancestors(target.parent)
    _check_private(target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        command = [compiler, *flags, str(SOURCE), "-o", str(built), "-lm"]
        subprocess.run(command, check=True, capture_output=True, text=True)
        os.chmod(built, 0o700)  # explicitly: the compiler's mode follows the umask (0775 under umask 002)
        os.replace(built, target)


def _cpu() -> str:
    """What -march=native compiles for: the library is rebuilt on another CPU sharing the cache."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    return platform.machine() + platform.processor() + flags


def band_attention(qk: Tensor, v: Tensor, order: Tensor, lo: Tensor, hi: Tensor, by_pos: Tensor | None) -> Tensor:
    """(qk, v) (batch, Tp, H, E) -> y (batch, Tp, H, E), the rounds merged.

    order (BH, S) unsorted index r * Tp + p of each sorted item of row b * H + h; lo / hi (BH, S) the first and
    last sorted item each query sees; by_pos (BH, Tp, R) every round's bucket of each position (None: no
    duplicate-pair correction).

    It runs the custom operator ``torch.ops.longrange.lsh_band`` (a `torch.library.custom_op` with a fake
    implementation and an autograd formula), so torch.compile, torch.export and the meta device see through
    it: they get the output's shape without calling the C code. The C code relies on what
    `kernel_torch.band_bounds` guarantees, and the operator's CPU implementation checks it (a few cheap passes
    over (BH, S) integers on real tensors, where reading them costs no device round trip; a violation would make
    the C code read the wrong or out-of-range items): 0 <= lo_i <= i <= hi_i < S, and lo, hi non-decreasing
    along each row (its windows only move forward)."""
    if qk.dtype not in SCALARS or v.dtype != qk.dtype or qk.shape != v.shape or qk.device.type not in ("cpu", "meta"):
        raise ValueError(f"native LSH kernel: float32/float64 CPU tensors of one shape, got {qk.dtype} {v.dtype}")
    return torch.ops.longrange.lsh_band(qk, v, order, lo, hi, by_pos)[0]


def _check_bounds(order: Tensor, lo: Tensor, hi: Tensor) -> None:
    index = torch.arange(order.shape[1], device=order.device)
    if not (
        bool(((lo >= 0) & (lo <= index) & (index <= hi) & (hi < order.shape[1])).all())
        and bool((lo.diff(dim=1) >= 0).all() and (hi.diff(dim=1) >= 0).all())
        and 0 <= int(order.min()) <= int(order.max()) < order.shape[1]
    ):
        raise ValueError("native LSH kernel: band bounds must satisfy 0 <= lo <= i <= hi < S, non-decreasing")


@torch.library.custom_op("longrange::lsh_band", mutates_args=(), device_types="cpu")
def _band_forward(
    qk: Tensor, v: Tensor, order: Tensor, lo: Tensor, hi: Tensor, by_pos: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """-> y (batch, Tp, H, E), lse (BH, S) one logsumexp per sorted item, norm (batch, Tp, H) of the queries: the
    backward pass needs all three (the kernel makes the unit keys from the queries and their norms as it goes,
    so no key tensor is ever stored)."""
    _check_bounds(order, lo, hi)
    qk, v = qk.contiguous(), v.contiguous()
    order, lo, hi = (z.contiguous().long() for z in (order, lo, hi))
    by_pos = None if by_pos is None else by_pos.contiguous().long()
    norm = torch.linalg.vector_norm(qk, dim=-1)  # (batch, Tp, H)
    y = torch.empty_like(qk)
    lse = qk.new_empty(order.shape)  # (BH, S) sorted order
    _run("lsh_band_forward", qk, [qk, norm, v, order, lo, hi, by_pos, y, lse], order)
    return y, lse, norm


@_band_forward.register_fake
def _band_forward_fake(qk, v, order, lo, hi, by_pos):
    return qk.new_empty(qk.shape), qk.new_empty(order.shape), qk.new_empty(qk.shape[:-1])


@torch.library.custom_op("longrange::lsh_band_backward", mutates_args=(), device_types="cpu")
def _band_backward(
    grad_y: Tensor,
    qk: Tensor,
    v: Tensor,
    y: Tensor,
    lse: Tensor,
    norm: Tensor,
    order: Tensor,
    lo: Tensor,
    hi: Tensor,
    by_pos: Tensor | None,
) -> tuple[Tensor, Tensor]:
    """-> (grad_qk, grad_v); not itself differentiable (no autograd formula: double backward is refused)."""
    qk, v = qk.contiguous(), v.contiguous()
    order, lo, hi = (z.contiguous().long() for z in (order, lo, hi))
    by_pos = None if by_pos is None else by_pos.contiguous().long()
    grad_qk, grad_v = torch.empty_like(qk), torch.empty_like(v)  # every vector is written by the kernel
    tensors = [qk, norm, v, grad_y.contiguous(), y, order, lo, hi, by_pos, lse, grad_qk, grad_v]
    _run("lsh_band_backward", qk, tensors, order)
    return grad_qk, grad_v


@_band_backward.register_fake
def _band_backward_fake(grad_y, qk, v, y, lse, norm, order, lo, hi, by_pos):
    return qk.new_empty(qk.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output) -> None:
    qk, v, order, lo, hi, by_pos = inputs
    y, lse, norm = output
    ctx.save_for_backward(qk, v, y, lse, norm, order, lo, hi, by_pos)


def _backward(ctx, grad_y, grad_lse, grad_norm):
    """Only y is differentiable: lse and norm are kept for this backward pass and used nowhere else."""
    qk, v, y, lse, norm, order, lo, hi, by_pos = ctx.saved_tensors
    grad_qk, grad_v = torch.ops.longrange.lsh_band_backward(grad_y, qk, v, y, lse, norm, order, lo, hi, by_pos)
    return grad_qk, grad_v, None, None, None, None


_band_forward.register_autograd(_backward, setup_context=_setup_context)


def _run(name: str, like: Tensor, tensors: list[Tensor | None], order: Tensor) -> None:
    """Call the kernel `name` on the BH rows in torch.get_num_threads() threads of disjoint row ranges."""
    _, tp, heads, e = like.shape
    library = _library(SCALARS[like.dtype], e)
    bh, s = order.shape
    rounds = s // tp
    pointers = [None if t is None else t.data_ptr() for t in tensors]
    sizes = [heads, tp, e, rounds]
    function = getattr(library, name)

    def rows(bounds: tuple[int, int]) -> int:
        return function(*pointers, *sizes, *bounds, e**-0.5, SELF_SCORE, NORM_EPS)

    n = max(1, min(torch.get_num_threads(), bh))
    splits = [(int(r[0]), int(r[-1]) + 1) for r in torch.arange(bh).tensor_split(n)]
    with ThreadPoolExecutor(n) as pool:
        if any(pool.map(rows, splits)):
            raise MemoryError(f"the native LSH kernel ran out of memory ({name})")
