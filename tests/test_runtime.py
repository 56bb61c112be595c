"""The shared runtime: --device resolves or fails in one line, --precision maps to autocast, --compile wraps."""

import pytest
import torch

from longrange.runtime import autocast, autocast_dtype, maybe_compile, resolve_device
from longrange.train.distributed import process_group_backend


def test_cpu_and_auto_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("spec", ["tpu9", "cuda:x", "cpu:0", "", "cuda:-1"])
def test_unknown_devices_are_one_line(spec):
    with pytest.raises(ValueError, match=r"--device .* is not one of cpu, cuda, cuda:N or auto") as err:
        resolve_device(spec)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("spec", ["cuda", "cuda:1"])
def test_cuda_without_cuda_says_so(spec):
    with pytest.raises(ValueError, match=r"(no CUDA|no CUDA device is visible); use --device cpu"):
        resolve_device(spec)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_beyond_the_devices_is_refused():
    n = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="CUDA device"):
        resolve_device(f"cuda:{n}")


def test_precisions():
    assert autocast_dtype("fp32") is None
    assert autocast_dtype("bf16") is torch.bfloat16 and autocast_dtype("fp16") is torch.float16
    with pytest.raises(ValueError, match=r"--precision 'fp8' is not one of \['auto', 'fp32', 'bf16', 'fp16'\]"):
        autocast_dtype("fp8")
    with pytest.raises(ValueError, match="--precision auto must be decided first"):
        autocast_dtype("auto")
    layer = torch.nn.Linear(4, 4)
    device = torch.get_default_device()  # `make test-gpu`: the layer and its autocast are on CUDA
    with autocast(device, "bf16"):
        assert layer(torch.randn(2, 4)).dtype == torch.bfloat16
    with autocast(device, "fp32"):
        assert layer(torch.randn(2, 4)).dtype == torch.float32


def test_maybe_compile_wraps_only_when_enabled(monkeypatch):
    model = torch.nn.Linear(2, 2)
    assert maybe_compile(model, False) is model
    monkeypatch.setattr(torch, "compile", lambda m: ("compiled", m))  # the real one builds C++: not in unit tests
    assert maybe_compile(model, True) == ("compiled", model)


def test_cpu_allocator_tuning_applies_on_glibc_and_can_be_turned_off(monkeypatch):
    import platform

    from longrange.runtime import tune_cpu_allocator

    tune_cpu_allocator.cache_clear()
    monkeypatch.setenv("LONGRANGE_MALLOC_TUNING", "0")
    assert tune_cpu_allocator() is False
    tune_cpu_allocator.cache_clear()
    monkeypatch.delenv("LONGRANGE_MALLOC_TUNING")
    expected = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
    assert tune_cpu_allocator() is expected
    tune_cpu_allocator.cache_clear()


def test_a_cuda_process_group_also_carries_host_side_tensors():
    """nccl refuses CPU tensors; the trainer all-reduces its token counts and stop flag on the CPU (no device sync
    to read them), so a CUDA group maps the CPU to gloo (never run with nccl here: one GPU, no second rank)."""
    assert process_group_backend(torch.device("cuda", 1)) == "cpu:gloo,cuda:nccl"
    assert process_group_backend(torch.device("cpu")) == "gloo"


def test_gloo_can_be_asked_for_ranks_that_share_one_gpu(monkeypatch):
    monkeypatch.setenv("LONGRANGE_DIST_BACKEND", "gloo")
    assert process_group_backend(torch.device("cuda", 0)) == "gloo"
    monkeypatch.setenv("LONGRANGE_DIST_BACKEND", "mpi")
    with pytest.raises(ValueError, match="only gloo"):
        process_group_backend(torch.device("cuda", 0))
    monkeypatch.delenv("LONGRANGE_DIST_BACKEND")
    assert process_group_backend(torch.device("cuda", 0)) == "cpu:gloo,cuda:nccl"
