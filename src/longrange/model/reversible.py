"""Reversible residual layers (Gomez et al. 2017, as used by the Reformer).

Each block maps (X1, X2) -> (Y1, Y2):

    Y1 = X1 + F(X2)      F = Dropout(Attention(LayerNorm(.)))
    Y2 = X2 + G(Y1)      G = Dropout(FeedForward(LayerNorm(.)))

so the inputs can be reconstructed from the outputs (X2 = Y2 - G(Y1), X1 = Y1 - F(X2)) and no
activation inside the stack is stored for the backward pass: memory no longer grows with depth.
The backward pass recomputes F and G under the RNG state recorded in the forward pass (dropout,
fresh LSH rotations), restoring it with `torch.random.fork_rng` instead of reseeding the global
RNG. Parameter gradients of the recomputed graphs are taken with `torch.autograd.grad` and
*returned* from the stack's backward (the parameters are inputs of the autograd Function), so the
outer backward pass accumulates each parameter's gradient exactly once: gradient accumulation works
as usual and DistributedDataParallel's hooks fire once per parameter. (Accumulating them with an
inner `backward` call instead, as public ports do, fires DDP's hook a second time when the Function
hands back None for the parameter: "Expected to mark a variable ready only once".)

The model feeds X1 = X2 = h and reads out (Y1 + Y2) / 2 (``readout="mean"``) or the concatenation
[Y1 ; Y2] (``readout="concat"``, 2D wide: Hugging Face / trax Reformer checkpoints, whose layers
compute ``attn_output = prev_attn_output + Attention(hidden_states)`` then
``hidden_states = hidden_states + FeedForward(attn_output)``, i.e. X1 is their attention stream, X2
their hidden-state stream, and their encoder returns [attn_output ; hidden_states]).
`plain_reversible` computes exactly the same function with ordinary autograd (the twin the tests
compare against).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from longrange.model.blocks import Block


class _RecordedRNG:
    """Record the RNG state before a call; replay the call later under the same state.

    Under `torch.compile` this is a graph break per reversible block (dynamo does not trace
    `torch.get_rng_state`): a compiled reversible stack runs as one graph per block. The replay is what
    makes the recomputed backward see the same dropout masks and LSH rotations as the forward, so it
    stays; a plain (non-reversible) stack compiles into one graph.
    """

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def replay(self):
        devices = list(range(torch.cuda.device_count())) if self.cuda is not None else []
        ctx = torch.random.fork_rng(devices=devices)
        ctx.__enter__()
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        return ctx


def _f(block: Block, x: Tensor, pad_mask: Tensor | None = None) -> Tensor:
    out = block.attention(block.attn_norm(x), state=None, doc_start=None, pad_mask=pad_mask).out
    return F.dropout(out, block.dropout, block.training)


def _g(block: Block, x: Tensor) -> Tensor:
    return F.dropout(block.ff(block.ff_norm(x)), block.dropout, block.training)


READOUTS = ("mean", "concat")


def _read_out(y1: Tensor, y2: Tensor, readout: str) -> Tensor:
    """(B, T, D) halves -> (B, T, D) mean or (B, T, 2D) concatenation."""
    if readout not in READOUTS:
        raise ValueError(f"reversible_readout={readout!r} is not allowed; choose one of {list(READOUTS)}")
    return torch.cat([y1, y2], dim=-1) if readout == "concat" else (y1 + y2) / 2


def plain_reversible(blocks: nn.ModuleList, h: Tensor, readout: str = "mean", pad_mask: Tensor | None = None) -> Tensor:
    """The reversible stack's function with ordinary autograd (stores every activation). pad_mask (B, T) True
    for real tokens: padding is never attended (it only reaches the attention layers)."""
    x1 = x2 = h
    for block in blocks:
        x1 = x1 + _f(block, x2, pad_mask)
        x2 = x2 + _g(block, x1)
    return _read_out(x1, x2, readout)


def reversible_with_state(
    blocks: nn.ModuleList, h: Tensor, states: list, readout: str = "mean", pad_mask: Tensor | None = None
) -> tuple[Tensor, list]:
    """`plain_reversible` threading each layer's attention state (Reformer decode caches).

    For streaming generation, under no_grad: there is no backward pass, so nothing needs to be
    recomputed and the layers' caches can be read and extended as in a plain stack. Returns the
    read-out and the next per-layer states. (Training keeps state=None: the custom backward
    recomputes F from the block inputs alone, so it cannot carry memories.)
    """
    x1 = x2 = h
    new_states = []
    for block, state in zip(blocks, states, strict=True):
        a = block.attention(block.attn_norm(x2), state=state, doc_start=None, pad_mask=pad_mask)
        x1 = x1 + F.dropout(a.out, block.dropout, block.training)
        x2 = x2 + _g(block, x1)
        new_states.append(a.state)
    return _read_out(x1, x2, readout), new_states


def _undo_half(
    fn, params: list[Tensor], rng: _RecordedRNG, inp: Tensor, out: Tensor, d_out: Tensor, d_inp_residual: Tensor
):
    """Invert one residual half ``out = other + fn(inp)`` and backpropagate through it.

    Recomputes fn(inp) under the RNG state of the forward pass and returns ``other = out - fn(inp)``,
    ``d_inp = d_inp_residual + (d fn / d inp)^T d_out`` and the gradients of `params` (None where
    fn does not use one); nothing is accumulated into ``.grad`` here.
    """
    with torch.enable_grad():
        inp = inp.detach().requires_grad_(True)
        ctx = rng.replay()
        value = fn(inp)
        ctx.__exit__(None, None, None)
        d_inp, *d_params = torch.autograd.grad(value, [inp, *params], d_out, allow_unused=True)
    with torch.no_grad():
        return out - value, d_inp_residual + d_inp, d_params


def _add(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return b if a is None else a if b is None else a + b


class _ReversibleStack(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, h: Tensor, blocks: nn.ModuleList, readout: str, pad_mask: Tensor | None, *params: Tensor
    ) -> Tensor:
        ctx.blocks, ctx.rng, ctx.readout, ctx.pad_mask = blocks, [], readout, pad_mask
        x1 = x2 = h.detach()
        with torch.no_grad():
            for block in blocks:
                rng_f = _RecordedRNG()
                x1 = x1 + _f(block, x2, pad_mask)
                rng_g = _RecordedRNG()
                x2 = x2 + _g(block, x1)
                ctx.rng.append((rng_f, rng_g))
        ctx.save_for_backward(x1, x2)  # only the stack's outputs are kept
        return _read_out(x1, x2, readout)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        y1, y2 = ctx.saved_tensors
        dy1, dy2 = grad_out.chunk(2, dim=-1) if ctx.readout == "concat" else (grad_out / 2, grad_out / 2)
        d_params = []  # per block, last block first: gradients of block.parameters() in order
        for block, (rng_f, rng_g) in zip(reversed(ctx.blocks), reversed(ctx.rng), strict=True):
            params = list(block.parameters())
            trainable = [p for p in params if p.requires_grad]
            x2, dx1, dg = _undo_half(partial(_g, block), trainable, rng_g, y1, y2, dy2, dy1)  # X2 = Y2 - G(Y1)
            f = partial(_f, block, pad_mask=ctx.pad_mask)
            x1, dx2, df = _undo_half(f, trainable, rng_f, x2, y1, dx1, dy2)  # X1 = Y1 - F(X2)
            y1, y2, dy1, dy2 = x1, x2, dx1, dx2
            d_trainable = iter([_add(a, b) for a, b in zip(df, dg, strict=True)])
            d_params.append([next(d_trainable) if p.requires_grad else None for p in params])
        # the outer autograd pass accumulates these into .grad, once per parameter
        return (dy1 + dy2, None, None, None) + tuple(g for block_grads in reversed(d_params) for g in block_grads)


def reversible(blocks: nn.ModuleList, h: Tensor, readout: str = "mean", pad_mask: Tensor | None = None) -> Tensor:
    """Run `blocks` as a reversible stack; activations are recomputed in the backward pass (pad_mask: as in
    `plain_reversible`)."""
    if readout not in READOUTS:
        raise ValueError(f"reversible_readout={readout!r} is not allowed; choose one of {list(READOUTS)}")
    params = [p for b in blocks for p in b.parameters()]
    return _ReversibleStack.apply(h, blocks, readout, pad_mask, *params)
