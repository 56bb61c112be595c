"""Reformer LSH and local attention against exact shared-QK attention."""

import shutil

import pytest
import torch
import torch.nn.functional as F

from longrange.attention.local import LocalAttention
from longrange.attention.lsh import SELF_SCORE, LSHAttention, kernel_native
from tests.attention.streaming import stream

D, H = 32, 2


def _lsh(
    n_hashes=1,
    bucket_size=64,
    n_buckets=None,
    causal=True,
    dedup=True,
    seed=0,
    *,
    d=D,
    heads=H,
    dropout=0.0,
    chunks_after=1,
    train=False,
):
    """An LSH layer with fixed weights (torch seed 0) and `hash_seed` = seed, in eval mode unless `train`."""
    torch.manual_seed(0)
    attn = LSHAttention(
        d,
        heads,
        dropout,
        causal,
        0,
        n_hashes=n_hashes,
        bucket_size=bucket_size,
        n_buckets=n_buckets,
        chunks_before=1,
        chunks_after=chunks_after,
        dedup=dedup,
        hash_seed=seed,
    )
    return attn.train(train)


def exact_shared_qk(attn: LSHAttention, x: torch.Tensor, causal: bool = True) -> torch.Tensor:
    """Full attention with the Reformer's shared QK: unit-norm keys, self only as a last resort."""
    b, t, _ = x.shape
    qk = attn.qk(x).view(b, t, H, D // H).transpose(1, 2)
    v = attn.v(x).view(b, t, H, D // H).transpose(1, 2)
    scores = qk @ F.normalize(qk, dim=-1).transpose(-1, -2) * (D // H) ** -0.5
    if causal:
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    scores = scores.masked_fill(torch.eye(t, dtype=torch.bool), SELF_SCORE)
    return attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, D))


@pytest.mark.parametrize("causal", [True, False])
def test_one_bucket_and_one_chunk_equals_exact_shared_qk_attention(causal):
    attn = _lsh(bucket_size=64, n_buckets=1, causal=causal)
    x = torch.randn(2, 40, D)  # padded internally to one chunk of 64
    torch.testing.assert_close(
        attn(x, state=None, doc_start=None).out, exact_shared_qk(attn, x, causal), rtol=1e-5, atol=1e-5
    )


def test_more_hash_rounds_approach_full_attention():
    x = torch.randn(4, 128, D)
    errors = []
    for n_hashes in (1, 2, 4, 8):
        attn = _lsh(n_hashes=n_hashes, bucket_size=16, n_buckets=4)
        with torch.no_grad():
            exact = exact_shared_qk(attn, x)
            errors.append((attn(x, state=None, doc_start=None).out - exact).square().mean().item())
    assert errors[-1] < errors[0] and errors[2] < errors[0], errors


def test_future_tokens_change_no_past_output_even_through_the_hashing():
    attn = _lsh(n_hashes=2, bucket_size=8, n_buckets=4)
    x = torch.randn(2, 64, D)
    for _ in range(5):
        y = x.clone()
        y[:, 40:] = torch.randn(2, 24, D)
        a, b = attn(x, state=None, doc_start=None).out, attn(y, state=None, doc_start=None).out
        torch.testing.assert_close(a[:, :40], b[:, :40], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["lsh", "local"])
def test_padding_and_roll_by_a_chunk_leave_real_outputs_unchanged(kind):
    attn = (
        _lsh(n_hashes=2, bucket_size=8, n_buckets=4)
        if kind == "lsh"
        else LocalAttention(D, H, 0.0, True, 0, chunk_len=8, chunks_before=1, chunks_after=0)
    )
    x = torch.randn(1, 30, D)
    base = attn(x, state=None, doc_start=None).out
    padded = torch.cat([x, torch.randn(1, 10, D)], 1)  # user padding at the end
    mask = torch.arange(40)[None] < 30
    torch.testing.assert_close(
        attn(padded, state=None, doc_start=None, pad_mask=mask).out[:, :30], base, rtol=1e-5, atol=1e-5
    )
    if kind == "local":  # a chunk of padding in front shifts every chunk by one: same outputs
        front = torch.cat([torch.randn(1, 8, D), x], 1)
        front_mask = torch.arange(38)[None] >= 8
        torch.testing.assert_close(
            attn(front, state=None, doc_start=None, pad_mask=front_mask).out[:, 8:], base, rtol=1e-5, atol=1e-5
        )


def test_local_attention_with_a_window_covering_everything_equals_full_causal_attention():
    attn = LocalAttention(D, H, 0.0, True, 0, chunk_len=16, chunks_before=1, chunks_after=0)
    x = torch.randn(2, 16, D)
    q, k, v = (z.view(2, 16, H, D // H).transpose(1, 2) for z in attn.qkv(x).chunk(3, -1))
    expected = attn.out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 16, D))
    torch.testing.assert_close(attn(x, state=None, doc_start=None).out, expected, rtol=1e-5, atol=1e-5)


def test_rotations_are_fixed_by_the_seed_in_evaluation_and_fresh_in_training():
    attn = _lsh(n_hashes=2, bucket_size=8, n_buckets=8, seed=3)
    x = torch.randn(1, 64, D)
    assert torch.equal(attn(x, state=None, doc_start=None).out, attn(x, state=None, doc_start=None).out)
    attn.train()
    assert not torch.equal(attn(x, state=None, doc_start=None).out, attn(x, state=None, doc_start=None).out)


def test_lsh_gradient_check_on_a_tiny_double_shape():
    attn = _lsh(2, 4, 2, seed=1, d=8, heads=2, chunks_after=0).double()
    x = torch.randn(1, 12, 8, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: attn(z, state=None, doc_start=None).out, (x,))


# ----------------------------------------------------------------------------- decode cache


@pytest.mark.parametrize("n_hashes", [1, 3])
@pytest.mark.parametrize("dedup", [True, False])
@pytest.mark.parametrize("cuts", [[17], [5, 6, 20, 33], list(range(9, 48))], ids=["two", "segments", "tokens"])
def test_decode_cache_streaming_equals_one_pass(n_hashes, dedup, cuts):
    # 2 buckets of ~24 items for C = 4: buckets longer than C, so the "last C of the bucket" rule is exercised
    attn = _lsh(n_hashes=n_hashes, bucket_size=4, n_buckets=2, dedup=dedup, seed=1)
    x = torch.randn(2, 48, D)
    whole = attn(x, state=None, doc_start=None).out
    streamed, state = stream(attn, x, cuts)
    torch.testing.assert_close(streamed, whole, rtol=1e-5, atol=1e-5)
    assert state["key"].shape[2] == 48 and state["buckets"].shape[-1] == n_hashes


def test_decode_cache_with_many_buckets_and_factorised_hashing():
    attn = _lsh(n_hashes=2, bucket_size=8, n_buckets=256, seed=2)  # factorised as 64 x 4
    x = torch.randn(1, 300, D)
    streamed, _ = stream(attn, x, [100, 101, 250])
    torch.testing.assert_close(streamed, attn(x, state=None, doc_start=None).out, rtol=1e-5, atol=1e-5)


def test_padding_inside_a_segment_changes_nothing_one_pass_or_cached():
    attn = _lsh(n_hashes=2, bucket_size=4, n_buckets=4, seed=3)
    x = torch.randn(1, 30, D)
    whole = attn(x, state=None, doc_start=None).out
    keep = torch.ones(36, dtype=torch.bool)
    keep[[3, 4, 11, 20, 33, 34]] = False  # six padding tokens scattered through the row
    padded = torch.zeros(1, 36, D)
    padded[:, keep] = x
    padded[:, ~keep] = torch.randn(1, 6, D)
    mask = keep[None]
    one_pass = attn(padded, state=None, doc_start=None, pad_mask=mask).out[:, keep]
    torch.testing.assert_close(one_pass, whole, rtol=1e-5, atol=1e-5)
    streamed, state = stream(attn, padded, [10, 21, 22], pad_mask=mask)
    torch.testing.assert_close(streamed[:, keep], whole, rtol=1e-5, atol=1e-5)
    assert int(state["valid"].sum()) == 30


def test_decode_cache_reset_rows_start_a_new_document():
    attn = _lsh(n_hashes=2, bucket_size=4, n_buckets=4, seed=4)
    x, y = torch.randn(2, 12, D), torch.randn(2, 6, D)
    state = attn(x, state=attn.init_state(2, x.device, x.dtype), doc_start=None).state
    out = attn(y, state=state.reset(torch.tensor([True, False])), doc_start=None).out
    torch.testing.assert_close(out[0], attn(y[:1], state=None, doc_start=None).out[0], rtol=1e-5, atol=1e-5)
    joined = attn(torch.cat([x, y], 1)[1:], state=None, doc_start=None).out[0, 12:]
    torch.testing.assert_close(out[1], joined, rtol=1e-5, atol=1e-5)


def test_decode_cache_refused_without_fixed_buckets_and_in_training():
    from longrange.memory.state import LayerState

    automatic = _lsh(n_hashes=2, bucket_size=4, n_buckets=None)
    assert not automatic.decode_cache and automatic.init_state(1, torch.get_default_device(), torch.float32) is None
    with pytest.raises(ValueError, match="lsh.n_buckets"):
        automatic(torch.randn(1, 4, D), state=LayerState(), doc_start=None)
    attn = _lsh(n_hashes=2, bucket_size=4, n_buckets=4)
    empty = attn.init_state(1, torch.get_default_device(), torch.float32)
    filled = attn(torch.randn(1, 8, D), state=empty, doc_start=None).state
    attn.train()
    assert attn(torch.randn(1, 8, D), state=empty, doc_start=None).state is empty  # passed through, not filled
    with pytest.raises(ValueError, match="evaluation mode"):
        attn(torch.randn(1, 1, D), state=filled, doc_start=None)


# ----------------------------------------------------------------------------- fused kernels

KERNELS = ["native", "flash"]  # the C band kernel (kernel_native) and the PyTorch flash-block one (kernel_torch)


def _use(attn: LSHAttention, kernel: str) -> LSHAttention:
    if kernel == "native" and not kernel_native.available(torch.float64):
        pytest.skip("no C compiler: the native kernel is not built here (test_native_kernel_builds says why)")
    attn.native = kernel == "native"
    return attn


def _needs_compiler() -> None:
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("no C compiler on this machine")


def test_native_kernel_builds_where_a_c_compiler_exists():
    _needs_compiler()
    assert kernel_native.available(torch.float32) and kernel_native.available(torch.float64)
    assert LSHAttention.native  # and it is the default


def test_native_kernel_build_falls_back_to_a_private_temporary_folder(monkeypatch, tmp_path):
    _needs_compiler()
    blocked = tmp_path / "file"
    blocked.write_text("a file, not a folder: the cache cannot be created under it")
    monkeypatch.setenv("LONGRANGE_CACHE", str(blocked))
    monkeypatch.setattr(kernel_native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    kernel_native._library.cache_clear()
    try:
        assert kernel_native.available(torch.float32, 12)
        (folder,) = (tmp_path / "tmp").iterdir()
        assert folder.stat().st_mode & 0o077 == 0  # private: nobody else can plant a library there
    finally:
        kernel_native._library.cache_clear()


def test_a_broken_compiler_warns_and_the_pytorch_kernel_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("CC", "false")  # a "compiler" that always fails
    monkeypatch.setenv("LONGRANGE_CACHE", str(tmp_path))
    monkeypatch.setattr(kernel_native.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    kernel_native._library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="could not be built"):
            assert not kernel_native.available(torch.float32, 12)
    finally:
        kernel_native._library.cache_clear()


def test_a_kernel_folder_others_can_write_is_never_loaded_from(monkeypatch, tmp_path):
    _needs_compiler()
    folder = tmp_path / "kernels"
    monkeypatch.setattr(kernel_native, "cache_dirs", lambda: [folder])
    kernel_native._library.cache_clear()
    try:
        assert kernel_native.available(torch.float32, 12)  # built there, privately
        folder.chmod(0o777)  # now anyone could replace the library in it
        kernel_native._library.cache_clear()
        with pytest.warns(UserWarning, match="not private"):
            assert not kernel_native.available(torch.float32, 12)
    finally:
        folder.chmod(0o700)
        kernel_native._library.cache_clear()


def test_lsh_under_bfloat16_autocast_runs_and_matches_float32():
    attn = _lsh(2, 8, 4, seed=1)
    x = torch.randn(1, 40, D)
    with torch.no_grad():
        expected = attn(x, state=None, doc_start=None).out
        # the projections run in bf16 (on the CPU: the PyTorch kernel, the native one is float32 only)
        with torch.autocast(torch.get_default_device().type, dtype=torch.bfloat16):
            got = attn(x, state=None, doc_start=None).out
    # bf16 rounding moves a few tokens to other buckets, so compare overall, not element by element
    assert got.dtype == torch.bfloat16 and torch.isfinite(got).all()
    assert torch.corrcoef(torch.stack([got.float().flatten(), expected.flatten()]))[0, 1] > 0.98


def test_lsh_trains_under_bfloat16_autocast_with_gradients_close_to_float32():
    """A training step's backward runs outside the autocast region, on the bf16 tensors the forward saved: the
    kernel's backward took the saved logsumexp in bf16, which the fused attention backward refuses (it keeps
    the logsumexp in float32), so a bf16 training step of an LSH model failed."""
    attn = _lsh(2, 8, 4, seed=1)
    x = torch.randn(1, 40, D, requires_grad=True)
    attn(x, state=None, doc_start=None).out.square().sum().backward()
    expected = x.grad.clone()
    x.grad = None
    with torch.autocast(torch.get_default_device().type, dtype=torch.bfloat16):
        out = attn(x, state=None, doc_start=None).out
    out.float().square().sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.corrcoef(torch.stack([x.grad.flatten(), expected.flatten()]))[0, 1] > 0.9


@pytest.mark.cpu_only
def test_native_kernel_refuses_band_bounds_it_cannot_take():
    qk, v = torch.randn(1, 8, 1, 4), torch.randn(1, 8, 1, 4)
    order = torch.arange(8)[None]
    lo, hi = torch.zeros(1, 8, dtype=torch.long), torch.arange(8)[None]
    hi[0, 3] = 2  # below its own query
    with pytest.raises(ValueError, match="band bounds"):
        kernel_native.band_attention(qk, v, order, lo, hi, None)


def test_without_the_native_kernel_the_pytorch_kernel_runs_the_same_attention(monkeypatch):
    monkeypatch.setenv("LONGRANGE_NATIVE", "0")
    kernel_native._library.cache_clear()
    try:
        assert not kernel_native.available(torch.float32)
        attn = _lsh(2, 8, 4, seed=2)
        x = torch.randn(1, 40, D)
        out = attn(x, state=None, doc_start=None).out  # the PyTorch kernel runs instead
        attn.fused = False
        torch.testing.assert_close(out, attn(x, state=None, doc_start=None).out, rtol=1e-5, atol=1e-6)
    finally:
        kernel_native._library.cache_clear()


def _both_paths(attn, x, mask=None, seed=5):
    """Outputs and input/weight gradients of the fused kernel and of the plain path, same rotations."""
    results = []
    for fused in (True, False):
        attn.fused = fused
        attn.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_()
        torch.manual_seed(seed)  # the same rotations in training mode
        y = attn(xx, state=None, doc_start=None, pad_mask=mask).out
        y = y if mask is None else y * mask[..., None]
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum().backward()
        results.append((y.detach(), xx.grad, attn.qk.weight.grad, attn.v.weight.grad))
    return results


@pytest.mark.parametrize(
    "settings",
    [
        dict(causal=True, n_hashes=3, dedup=True, chunks_before=1),
        dict(causal=True, n_hashes=2, dedup=False, chunks_before=2),
        dict(causal=True, n_hashes=2, dedup=True, chunks_before=0),
        dict(causal=False, n_hashes=3, dedup=True, chunks_before=1),
        dict(causal=False, n_hashes=1, dedup=True, chunks_before=2),
    ],
    ids=["causal-dedup", "causal-before2", "causal-before0", "bidirectional", "bidirectional-one-round"],
)
@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("kernel", KERNELS)
def test_fused_kernel_equals_the_plain_path_outputs_and_gradients(settings, train, kernel):
    settings = dict(settings)
    causal = settings.pop("causal")
    torch.manual_seed(0)
    attn = LSHAttention(
        D, H, 0.0, causal, 0, bucket_size=8, n_buckets=4, chunks_after=1, hash_seed=2, **settings
    ).double()
    _use(attn, kernel).train(train)
    x = torch.randn(2, 45, D, dtype=torch.double)  # padded to 48: 6 chunks, buckets longer than a chunk
    mask = torch.arange(45)[None] < torch.tensor([[45], [31]])
    fused, plain = _both_paths(attn, x, mask)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)  # the self score is added, not set (docstring)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kernel", KERNELS)
def test_fused_kernel_gradient_check_with_dedup(kernel, causal):
    attn = _use(_lsh(3, 4, 2, causal=causal, seed=1, d=8, heads=2).double(), kernel)
    x = torch.randn(1, 16, 8, dtype=torch.double, requires_grad=True)
    # on CUDA the plain path's backward sums shared rounds with atomic adds: two passes differ in the last bits
    nondet_tol = 0.0 if x.device.type == "cpu" else 1e-12
    assert torch.autograd.gradcheck(lambda z: attn(z, state=None, doc_start=None).out, (x,), nondet_tol=nondet_tol)


@pytest.mark.parametrize("chunks_before", [0, 1])
@pytest.mark.parametrize("kernel", KERNELS)
def test_fused_kernel_in_float32_matches_where_a_query_sees_only_itself(kernel, chunks_before):
    """Scores and logsumexps near SELF_SCORE are 0.008 apart in float32: a kernel that subtracts them
    where the query sees only itself (or forms the round weights two different ways) is off by ~1%."""
    torch.manual_seed(0)
    attn = LSHAttention(D, H, 0.0, True, 0, 3, 8, 4, chunks_before, 0, True, 2)
    _use(attn, kernel)
    x = torch.randn(2, 64, D)
    for a, b in zip(*_both_paths(attn, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=2e-5)


def test_attention_dropout_in_training_takes_the_plain_path_and_drops():
    attn = _lsh(2, 8, 4, dropout=0.5, chunks_after=0, train=True)
    x = torch.randn(1, 32, D)
    torch.manual_seed(1)
    with_dropout = attn(x, state=None, doc_start=None).out
    attn.dropout = 0.0
    torch.manual_seed(1)
    without = attn(x, state=None, doc_start=None).out
    assert torch.isfinite(with_dropout).all() and not torch.allclose(with_dropout, without)


@pytest.mark.parametrize("elements", [2**30, 2000, 500], ids=["one-group", "row-groups", "block-ranges"])
def test_fused_kernel_is_the_same_whatever_the_group_size(monkeypatch, elements):
    import longrange.attention.lsh.kernel_torch as kernel

    attn = _use(_lsh(2, 8, 4, seed=2, chunks_after=0, train=True).double(), "flash")
    x = torch.randn(3, 40, D, dtype=torch.double)
    monkeypatch.setattr(kernel, "GROUP_ELEMENTS", elements)
    fused, plain = _both_paths(attn, x)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_hashing_in_blocks_of_positions_gives_the_same_buckets(monkeypatch):
    import longrange.attention.lsh.hashing as lsh_module

    attn = _lsh(3, 8, [4, 6], seed=3)
    qk = torch.randn(2, H, 50, D // H)
    whole = attn.hash(qk, 24)
    monkeypatch.setattr(lsh_module, "HASH_BLOCK", 7)  # ragged blocks
    assert torch.equal(attn.hash(qk, 24), whole)
    assert whole.shape == (2, H, 3, 50) and whole.max() < 24 and whole.unique().numel() > 12


@pytest.mark.parametrize("kernel", KERNELS)
def test_fused_kernel_handles_a_zero_query_whose_norm_is_clamped(kernel):
    attn = _use(_lsh(2, 8, 4, seed=1, causal=False).double(), kernel)
    x = torch.randn(1, 24, D, dtype=torch.double)
    x[0, 5] = 0  # no bias in the projections: a zero query, its key norm clamped as F.normalize clamps it
    for a, b in zip(*_both_paths(attn, x), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kernel", KERNELS)
def test_float64_dedup_plain_and_decode_equal_the_fused_kernels_to_1e12(kernel):
    """The duplicate-pair log count is taken in the input's dtype on every path (a float32 one cost 3e-9)."""
    torch.manual_seed(0)
    attn = _use(_lsh(n_hashes=4, bucket_size=4, n_buckets=2, seed=1).double(), kernel)
    x = torch.randn(2, 48, D, dtype=torch.double)  # 2 buckets, 4 rounds: many pairs share 2-4 buckets
    fused, plain = _both_paths(attn, x)
    for a, b in zip(fused, plain, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    attn.fused = True
    with torch.no_grad():
        whole = attn(x, state=None, doc_start=None).out
        streamed, _ = stream(attn, x, [17, 30])
    torch.testing.assert_close(streamed, whole, rtol=0, atol=1e-12)


def _kernel_cache(monkeypatch, tmp_path):
    _needs_compiler()
    folder = tmp_path / "kernels"
    monkeypatch.setattr(kernel_native, "cache_dirs", lambda: [folder])
    kernel_native._library.cache_clear()
    return folder


def test_a_kernel_built_under_umask_002_is_private_and_reused(monkeypatch, tmp_path):
    import os

    folder = _kernel_cache(monkeypatch, tmp_path)
    old = os.umask(0o002)
    try:
        assert kernel_native.available(torch.float32, 12)
        (built,) = folder.glob("*.so")
        assert built.stat().st_mode & 0o777 == 0o700
        stamp = built.stat().st_mtime_ns
        kernel_native._library.cache_clear()
        assert kernel_native.available(torch.float32, 12) and built.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    finally:
        os.umask(old)
        kernel_native._library.cache_clear()


@pytest.mark.parametrize("problem", ["loose-mode", "symlink"])
def test_a_refused_kernel_file_is_rebuilt_and_a_link_is_never_followed(monkeypatch, tmp_path, problem):
    folder = _kernel_cache(monkeypatch, tmp_path)
    try:
        assert kernel_native.available(torch.float32, 12)
        (built,) = folder.glob("*.so")
        if problem == "loose-mode":
            built.chmod(0o775)  # what an older build left under umask 002: refused forever before
        else:  # a link to a library in a folder anyone can write
            elsewhere = tmp_path / "shared"
            elsewhere.mkdir(mode=0o777)
            elsewhere.chmod(0o777)
            planted = elsewhere / "planted.so"
            built.rename(planted)
            planted.chmod(0o700)
            built.symlink_to(planted)
        kernel_native._library.cache_clear()
        assert kernel_native.available(torch.float32, 12)  # rebuilt, no warning, no PyTorch fallback
        assert not built.is_symlink() and built.stat().st_mode & 0o777 == 0o700
    finally:
        kernel_native._library.cache_clear()


def _native_kernel_inputs():
    """The arguments the LSH layer hands the native kernel (float64, 2 rounds with dedup), captured from a call."""
    seen = []
    original = kernel_native.band_attention

    def capture(*args):
        seen.append(args)
        return original(*args)

    attn = _use(_lsh(2, 4, 4, seed=1, d=8, heads=2).double(), "native")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernel_native, "band_attention", capture)
        attn(torch.randn(1, 16, 8, dtype=torch.double), state=None, doc_start=None)
    (args,) = seen
    return args


@pytest.mark.cpu_only
def test_native_kernel_is_a_custom_op_that_opcheck_and_the_meta_device_see_through():
    qk, v, order, lo, hi, by_pos = _native_kernel_inputs()
    qk, v = qk.detach().clone().requires_grad_(), v.detach().clone().requires_grad_()
    torch.library.opcheck(torch.ops.longrange.lsh_band.default, (qk, v, order, lo, hi, by_pos))
    meta = [z.detach().to("meta") for z in (qk, v, order, lo, hi, by_pos)]
    meta[0].requires_grad_(), meta[1].requires_grad_()
    y = kernel_native.band_attention(*meta)  # the fake implementation: a shape, no C code, no host read
    assert y.device.type == "meta" and y.shape == qk.shape
    y.sum().backward()  # the backward operator's fake implementation
    assert meta[0].grad.shape == qk.shape and meta[1].grad.device.type == "meta"


@pytest.mark.cpu_only
def test_native_kernel_compiles_without_a_graph_break():
    qk, v, order, lo, hi, by_pos = _native_kernel_inputs()
    fn = torch.compile(kernel_native.band_attention, backend="eager", fullgraph=True)  # fullgraph: a break raises
    torch.testing.assert_close(
        fn(qk, v, order, lo, hi, by_pos), kernel_native.band_attention(qk, v, order, lo, hi, by_pos)
    )


def test_kernel_choice_follows_device_dropout_and_settings():
    cpu, meta = torch.device("cpu"), torch.device("meta")
    attn = _lsh(2, 8, 4)
    attn.native = False
    assert attn.kernel(cpu, torch.float32, D // H) == "torch"
    assert attn.kernel(meta, torch.float32, D // H) == "plain"  # the fused kernels are CPU code
    attn.fused = False
    assert attn.kernel(cpu, torch.float32, D // H) == "plain"
    dropping = _lsh(2, 8, 4, dropout=0.1, train=True)
    assert dropping.kernel(cpu, torch.float32, D // H) == "plain"  # no fused kernel has attention dropout
    dropping.eval()
    dropping.native = False
    assert dropping.kernel(cpu, torch.float32, D // H) == "torch"
