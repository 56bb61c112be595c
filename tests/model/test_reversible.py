"""Reversible vs plain stack (outputs and gradients, with dropout); chunked feed-forward and head."""

import pytest
import torch

import longrange
from tests.model.gradients import loss_and_grads as _grads


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_reversible_equals_plain_twin_with_gradients(dropout):
    torch.manual_seed(0)
    model = longrange.build_model(
        longrange.ModelConfig.from_name(
            "reformer-tiny", segment_len=64, dropout=dropout, layers=["local", "lsh", "local"]
        )
    )
    tokens = torch.randint(0, 256, (2, 64))
    loss_rev, grads_rev = _grads(model, tokens, seed=5)  # training mode: dropout + fresh LSH rotations
    model.reversible_backward = False
    loss_plain, grads_plain = _grads(model, tokens, seed=5)
    torch.testing.assert_close(loss_rev, loss_plain, rtol=0, atol=0)
    for name, grad in grads_plain.items():
        scale = grad.abs().max().clamp(min=1e-8)
        assert (grads_rev[name] - grad).abs().max() / scale <= 1e-5, name


def test_reversible_with_a_padding_mask_equals_plain_twin_and_ignores_the_padding():
    torch.manual_seed(0)
    model = longrange.build_model(
        longrange.ModelConfig.from_name("reformer-tiny", segment_len=64, layers=["local", "lsh"])
    )
    tokens = torch.randint(0, 256, (2, 40))
    real = torch.arange(40)[None] < torch.tensor([[40], [29]])  # row 1: 11 padding tokens at the end
    targets = tokens.masked_fill(~real, -100)
    results = []
    for custom in (True, False):
        model.reversible_backward = custom
        model.zero_grad()
        torch.manual_seed(3)  # the same rotations
        out = model(tokens, targets=targets, pad_mask=real)
        out.loss.backward()
        results.append((out.loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (loss_rev, grads_rev), (loss_plain, grads_plain) = results
    torch.testing.assert_close(loss_rev, loss_plain)
    for a, b in zip(grads_rev, grads_plain, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    model.eval()
    with torch.no_grad():  # other padding content changes nothing real (padding is never attended)
        other = tokens.masked_fill(~real, 7)
        torch.testing.assert_close(
            model(tokens, pad_mask=real).logits[real], model(other, pad_mask=real).logits[real], rtol=1e-5, atol=1e-6
        )


def test_reversible_works_with_gradient_accumulation():
    torch.manual_seed(0)
    model = longrange.build_model(longrange.ModelConfig.from_name("reformer-tiny", segment_len=32))
    a, b = torch.randint(0, 256, (2, 2, 32))
    for m_rev in (True, False):
        model.reversible_backward = m_rev
        model.zero_grad()
        torch.manual_seed(1)
        model(a, targets=a).loss.backward()
        model(b, targets=b).loss.backward()
        if m_rev:
            accumulated = [p.grad.clone() for p in model.parameters()]
    for x, y in zip(accumulated, [p.grad for p in model.parameters()], strict=True):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("preset", ["transformer-tiny", "reformer-tiny"])
def test_chunked_feed_forward_and_head_equal_unchunked(preset):
    torch.manual_seed(0)
    plain = longrange.build_model(longrange.ModelConfig.from_name(preset, segment_len=64))
    chunked = longrange.build_model(longrange.ModelConfig.from_name(preset, segment_len=64, ff_chunks=4, head_chunks=3))
    chunked.load_state_dict(plain.state_dict())
    tokens = torch.randint(0, 256, (2, 64))
    loss_a, grads_a = _grads(plain, tokens, seed=2)
    loss_b, grads_b = _grads(chunked, tokens, seed=2)
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-6, atol=1e-6)
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-5, atol=1e-6)


def test_axial_positions_cover_long_sequences_with_few_parameters():
    model = longrange.build_model(longrange.ModelConfig.from_name("reformer-tiny"))
    assert model.positions.rows.numel() + model.positions.cols.numel() == 256 * 32 * 2
    out = model.positions(torch.tensor([[0, 255, 256, 65535]]))
    assert out.shape == (1, 4, 64)
    assert torch.equal(out[0, 0, :32], out[0, 1, :32]) and not torch.equal(out[0, 1, :32], out[0, 2, :32])
