"""Fused PyTorch kernel of the causal-exact LSH attention (`longrange.attention.lsh.layer`, convention "longrange").

The native C kernel (`kernel_native`) computes the same attention faster and is used where it builds; this
one runs everywhere PyTorch does (no compiler needed) and shares `band_bounds` and the constants with it.

Shape legend: BH rows (batch x heads), G rows of one group, Tp padded tokens, H heads, R hash rounds,
S = R * Tp sorted items, C chunk length, B kernel query block (C / SPLIT), n query blocks of a group,
W = B * (blocks before + 1 + blocks after) window keys per block, E head width.

Layout: queries/keys, values and the output stay in the projections' natural (batch, Tp, H, E)
layout, read and written as flat rows (b * Tp + p) * H + h of (batch b, position p, head h), so no
head transpose is ever copied (the sorting `order` is still per row b * H + h).

What it computes is exactly the mechanism of `layer.py`: items sorted by (round, bucket, position);
query i sees the keys of its own bucket at most C items away in sorted order (and not after it when
causal), itself at -1e5 (a last resort), minus log(number of rounds the pair shares a bucket) with
``dedup``; the rounds are merged with weights softmax(logsumexp of each round). Tests check it
against the plain masked-softmax path (`kernel_plain.py`) (outputs and gradients).

Why it is fast (measured against that plain path, same outputs):

* The visibility mask needs no per-score bucket comparison. Items of one bucket are contiguous in
  sorted order, so a query's visible keys are the band [max(i - C, start of its bucket), i] (causal;
  up to min(i + C, end of its bucket) otherwise): two integers per item, turned into the block's
  mask by two comparisons with the window's column index.
* The band never reaches further than C items, so queries go in blocks of B = C / 2 with a window
  of the 2 previous blocks (and 2 following ones when bidirectional): C + B keys per query instead of
  the chunk layout's 2C, the same visible keys (with ``chunks_before`` 0 the window is the chunk
  itself, and the chunk layout is kept).
* Mask, dedup correction and self score are folded into one additive bias, and the attention of all
  blocks runs in PyTorch's fused CPU flash-attention kernel (online softmax, no score tensor in
  memory), which also returns the logsumexp the round merge needs. The self score is therefore
  q.k/sqrt(E) - 1e5 instead of exactly -1e5: that only matters when nothing else is visible in any
  round, where the output is the token's own value either way.
* Keys and values of a block's window are a strided view of the sorted sequence, not copies
  (look_around's concatenation); their gradients are added back to their rows with index_add.
* The backward pass calls the fused backward kernel with ``out`` replaced by the merged output y.
  With G_r = w_r dL/dy the gradient of round r's output, the flash backward uses
  dS = P (G_r.v - G_r.out); the round merge adds dL/dlse_r = w_r dL/dy.(o_r - y), and both together
  give dS = P (G_r.v - G_r.y): passing y as ``out`` is the exact gradient through the logsumexp.
* What is kept for the backward pass is one int8 code per score (hidden, or the dedup count) and
  the inputs; the bias is rebuilt from the codes by a table look-up (no logarithms per score), and
  the kernel runs again as checkpointing would, group by group, so memory stays O(S * W) bytes.

The kernel has no attention dropout; the layer uses the plain path when dropout is active.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from longrange.attention.lsh.scores import MASKED, NORM_EPS, SELF_SCORE

# score-bias elements built at once (~40 bytes each per group). Small on purpose: each group's temporaries
# (bias, window gradients) then stay under the allocator's mmap threshold and near the cache, instead of
# fresh pages faulted in per group; 2**20 measured 1.3x faster than 2**23 at 4K (2**18: slower again)
GROUP_ELEMENTS = 2**20
SPLIT = 2  # kernel query blocks of C / SPLIT items: each query then scores C + C / SPLIT keys, not 2C

_flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


def sorted_lsh_attention(
    qk: Tensor,
    v: Tensor,
    order: Tensor,
    bucket_s: Tensor,
    by_pos: Tensor | None,
    *,
    c: int,
    window: tuple[int, int],
    causal: bool,
) -> Tensor:
    """LSH attention of sorted items with the rounds merged: (qk, v) (batch, Tp, H, E) -> y (batch, Tp, H, E).

    order (BH, S) the unsorted (round-major) index r * Tp + p of each sorted item of row b * H + h; bucket_s (BH, S)
    its (round, bucket) id; by_pos (BH, Tp, R) every round's bucket of each position for the dedup
    correction (None: no correction); window (chunks before, chunks after) of the chunked layout.
    """
    before, after = window
    if before >= 1 and c % SPLIT == 0:  # the band never reaches further than C: smaller blocks, same keys
        block, blocks_before, blocks_after = c // SPLIT, SPLIT, SPLIT if after else 0
    else:  # chunks_before 0 (the window is the chunk itself) or a chunk length SPLIT does not divide
        block, blocks_before, blocks_after = c, before, after
    lo, hi = band_bounds(bucket_s, c, window, causal)
    base = (torch.arange(lo.shape[1], device=lo.device) // block - blocks_before) * block  # each block's window start
    lo, hi = (lo - base).int(), (hi - base).int()  # as column indices into the block's window
    other_s = other_round_buckets(by_pos, order) if by_pos is not None else None
    return SortedLSHAttention.apply(qk, v, order, lo, hi, other_s, block, (blocks_before, blocks_after))


def band_bounds(bucket_s: Tensor, c: int, window: tuple[int, int], causal: bool) -> tuple[Tensor, Tensor]:
    """bucket_s (G, S) sorted (round, bucket) ids -> first and last key each query sees (G, S) int64, as sorted
    item indices: its own bucket, at most C items away (and not after it when causal), inside its chunk's
    window of (chunks before, chunks after)."""
    s = bucket_s.shape[1]
    index = torch.arange(s, device=bucket_s.device)
    change = bucket_s[:, 1:] != bucket_s[:, :-1]  # (G, S - 1) a new bucket starts at the next item
    start = torch.where(F.pad(change, (1, 0), value=True), index, 0).cummax(dim=1).values  # bucket's first item
    chunk = index // c
    lo = torch.maximum(torch.maximum(index - c, start), (chunk - window[0]) * c)
    if causal:
        return lo, index.expand_as(lo)
    last = F.pad(change, (0, 1), value=True)
    end = torch.where(last, index, s).flip(1).cummin(dim=1).values.flip(1)  # bucket's last item
    return lo, torch.minimum(torch.minimum(index + c, end), (chunk + 1 + window[1]) * c - 1)


def other_round_buckets(by_pos: Tensor, order: Tensor) -> Tensor:
    """by_pos (G, Tp, R) every round's bucket of each position, order (G, S) -> (G, S, R - 1) int32:
    for each sorted item of round r, its position's buckets in the other rounds, in round order.

    Query and key of one round share their bucket in that round whenever the key is visible, so the
    dedup count is 1 + the matches among these R - 1 ids (keys of another round are never visible)."""
    g, tp, r = by_pos.shape
    others = torch.tensor([[j for j in range(r) if j != i] for i in range(r)], device=by_pos.device)  # (R, R - 1)
    buckets = by_pos.int().gather(1, (order % tp)[..., None].expand(-1, -1, r))  # (G, S, R)
    return buckets.gather(2, others[order // tp])


class SortedLSHAttention(torch.autograd.Function):
    """The kernel behind `sorted_lsh_attention`, over groups of rows or of one row's blocks (`_groups`)."""

    @staticmethod
    def forward(ctx, qk, v, order, lo, hi, other_s, block, window):
        _, tp, heads, e = qk.shape
        bh, s = order.shape
        w = block * (window[0] + 1 + window[1])
        norm = torch.linalg.vector_norm(qk, dim=-1, keepdim=True)  # (batch, Tp, H, 1)
        keys = qk / norm.clamp_min(NORM_EPS)  # F.normalize, by hand: the backward pass needs only the norms
        y = qk.new_zeros(qk.shape)  # (batch, Tp, H, E)
        # sorted order; float32 at least, as the fused attention keeps it: a 16-bit logsumexp near the self score's
        # -1e5 is hundreds apart, and the attention backward refuses one
        lse = qk.new_empty(bh, s, dtype=torch.promote_types(qk.dtype, torch.float32))
        codes = torch.empty(bh, s // block, block, w, dtype=torch.int8, device=qk.device)
        sources = [z.reshape(-1, e) for z in (qk, keys, v)]  # flat rows, views
        groups = _groups(bh, s // block, block * w)
        ctx.kept = None
        done = []  # (layout, round outputs) of the current rows' groups, merged once all their rounds are
        for rows, first, stop in groups:
            lay = _Layout(order, rows, first, stop, tp, heads, block, window)
            ids = None if other_s is None else other_s[rows]
            codes_g = _codes(lo[rows, lay.items], hi[rows, lay.items], ids, lay, out=codes[rows, first:stop])
            inputs = (lay.queries(sources[0]), lay.windows(sources[1]), lay.windows(sources[2]))
            bias = _bias(codes_g, lay, qk.dtype)
            out_g, lse_g = _flash(*inputs, attn_mask=bias, scale=e**-0.5)  # (G, n, B, E), (G, n, B)
            if len(groups) == 1 and any(ctx.needs_input_grad[:2]):  # small: keep them, not gather again
                ctx.kept = (*inputs, bias)
            done.append((lay, out_g))
            lse[rows, lay.items] = lse_g.flatten(1).to(lse.dtype)
            if stop == s // block:  # every round of these rows is done: merge them into y, without copies
                weight = _round_weights(lse[rows], order[rows], tp).to(qk.dtype)  # (G, S)
                for lay_d, out_d in done:
                    out_d.mul_(weight[:, lay_d.items].view(*lay_d.query_rows.shape, 1))
                    _add_rows(y.view(-1, e), lay_d.query_rows, out_d)
                done = []
        ctx.save_for_backward(qk, v, order, codes, lse, y, norm)
        ctx.settings = (block, window)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        qk, v, order, codes, lse, y, norm = ctx.saved_tensors
        block, window = ctx.settings
        _, tp, heads, e = qk.shape
        keys = qk / norm.clamp_min(NORM_EPS)
        sources = [z.reshape(-1, e) for z in (qk, keys, v, grad_y, y)]
        grads = [qk.new_zeros(qk.shape) for _ in range(3)]  # qk, keys, v (batch, Tp, H, E)
        flat_grads = [z.view(-1, e) for z in grads]
        for rows, first, stop in _groups(*codes.shape[:2], codes[0, 0].numel()):
            lay = _Layout(order, rows, first, stop, tp, heads, block, window)
            if first == 0:
                weight = _round_weights(lse[rows], order[rows], tp).to(qk.dtype)  # (G, S)
            lse_g = lse[rows, lay.items].view_as(lay.query_rows)  # float32 (float64 for a float64 check)
            q_g, k_w, v_w, bias = ctx.kept or (
                lay.queries(sources[0]),
                lay.windows(sources[1]),
                lay.windows(sources[2]),
                _bias(codes[rows, first:stop], lay, qk.dtype),
            )
            gq, gk_w, gv_w = _flash_backward(
                lay.queries(sources[3]).mul_(weight[:, lay.items].view_as(lse_g)[..., None]),  # G_r = w_r dL/dy
                q_g,
                k_w,
                v_w,
                lay.queries(sources[4]),  # y, not the round's output: the logsumexp path (module docstring)
                lse_g,
                0.0,
                False,
                attn_mask=bias,
                scale=e**-0.5,
            )
            _add_rows(flat_grads[0], lay.query_rows, gq)
            _add_rows(flat_grads[1], lay.window_rows, gk_w)
            _add_rows(flat_grads[2], lay.window_rows, gv_w)
        grad_qk, grad_keys, grad_v = grads
        grad_qk += normalize_backward(keys, norm, grad_keys)
        ctx.kept = None
        return grad_qk, grad_v, None, None, None, None, None, None


def normalize_backward(keys: Tensor, norm: Tensor, grad_keys: Tensor) -> Tensor:
    """Gradient through keys = x / max(|x|, NORM_EPS) (F.normalize) from the keys and the norms |x|, computed in
    grad_keys' storage (no temporaries of the inputs' size: fresh pages are slow): (g - keys (keys . g)) / norm,
    and only g / NORM_EPS where the norm was clamped."""
    dot = torch.einsum("...e,...e->...", keys, grad_keys)[..., None].masked_fill_(norm < NORM_EPS, 0)
    return grad_keys.addcmul_(keys, dot, value=-1).div_(norm.clamp_min(NORM_EPS))


class _Layout:
    """Where the sorted items of a group live in the flat (batch * Tp * H, E) tensors: rows `rows` (a slice
    of the BH rows b * H + h), blocks [first, stop) of B = `block` items (n = stop - first blocks, sorted
    items `items`).

    all_rows (G, S): flat row (b * Tp + p) * H + h of every sorted item of these rows; query_rows (G, n, B) those of the
    group's queries; window_rows (G, n, W): those of each block's window keys. Window slots before the
    first or after the last item read row 0: the bias hides them, so they weigh exactly 0 and their
    gradients are exactly 0 (no padded copy of the inputs is needed). Windows are a strided view.
    """

    def __init__(self, order: Tensor, rows: slice, first: int, stop: int, tp: int, heads: int, block: int, window):
        g = rows.stop - rows.start
        self.block, self.window = block, window
        self.items = slice(first * block, stop * block)
        self.padded_items = slice(first * block, (stop + window[0] + window[1]) * block)  # of the padded sequence
        row = torch.arange(rows.start, rows.stop, device=order.device)[:, None]  # (G, 1) b * H + h
        self.all_rows = ((row // heads) * tp + order[rows] % tp) * heads + row % heads
        self.query_rows = self.all_rows[:, self.items].reshape(g, stop - first, block)
        hidden = self.all_rows.new_zeros(g, 1)  # row read by the hidden window slots
        padded = torch.cat(
            [hidden.expand(-1, window[0] * block), self.all_rows, hidden.expand(-1, window[1] * block)], 1
        )
        self.padded_rows = padded[:, self.padded_items]  # (G, (n + before + after) * B)
        self.window_rows = _windows(self.padded_rows[..., None], block, window)[..., 0]  # (G, n, W)

    def queries(self, source: Tensor) -> Tensor:  # flat rows (batch * Tp * H, E) -> (G, n, B, E)
        return source.index_select(0, self.query_rows.flatten()).view(*self.query_rows.shape, -1)

    def windows(self, source: Tensor) -> Tensor:  # flat rows (batch * Tp * H, E) -> (G, n, W, E), a strided view
        padded = source.index_select(0, self.padded_rows.flatten()).view(*self.padded_rows.shape, -1)
        return _windows(padded, self.block, self.window)


def _windows(padded: Tensor, block: int, window: tuple[int, int]) -> Tensor:
    """padded (G, P, F) sorted items after `before` blocks of padding -> (G, N, W, F) overlapping windows."""
    g, p, f = padded.shape
    n = p // block - window[0] - window[1]
    padded = padded.contiguous()
    return padded.as_strided((g, n, block * (window[0] + 1 + window[1]), f), (padded.stride(0), block * f, f, 1))


def _codes(lo: Tensor, hi: Tensor, other_s: Tensor | None, lay: _Layout, out: Tensor) -> Tensor:
    """Visibility and dedup count of every score, written into out (G, n, B, W) int8: 0 hidden, else the
    number of rounds in which query and key share a bucket (1 without dedup). One byte per score, kept
    for the backward pass instead of comparing bucket ids again. lo / hi (G, n * B) the group's band
    bounds; other_s (G, S, R - 1) the rows' other-round buckets."""
    g, n, b, w = out.shape
    col = torch.arange(w, device=lo.device, dtype=lo.dtype)
    lo, hi = lo.view(g, n, b, 1), hi.view(g, n, b, 1)
    if other_s is None:
        out.fill_(1)
    else:  # R - 1 comparisons of (B, 1) ids with (1, W) ids per block, counted in int8
        q_ids = other_s[:, lay.items].view(g, n, b, -1)
        padded = F.pad(other_s, (0, 0, lay.window[0] * b, lay.window[1] * b), value=-1)[:, lay.padded_items]
        k_ids = _windows(padded, b, lay.window)  # (G, n, W, R - 1)
        torch.eq(q_ids[..., 0, None], k_ids[..., None, :, 0], out=out.view(torch.bool))
        out.add_(1)
        for i in range(1, other_s.shape[-1]):
            out += (q_ids[..., i, None] == k_ids[..., None, :, i]).view(torch.int8)
    return out.masked_fill_((col < lo) | (col > hi), 0)


def _bias(codes: Tensor, lay: _Layout, dtype) -> Tensor:
    """codes (G, N, B, W) -> additive score bias by table look-up: MASKED where hidden, -log(count)
    where visible, plus SELF_SCORE on the diagonal (a query's own key is window column
    i + before * B)."""
    r_max = 127  # int8 codes
    table = torch.arange(r_max + 1, dtype=torch.float64, device=codes.device).log().neg()
    table[0] = MASKED
    # int64 indices: index_select is several times slower with int32 ones
    bias = table.to(dtype).index_select(0, codes.flatten().long()).view(codes.shape)
    bias.diagonal(offset=lay.window[0] * lay.block, dim1=-2, dim2=-1).add_(SELF_SCORE)
    return bias


def _round_weights(lse: Tensor, order: Tensor, tp: int) -> Tensor:
    """Sorted logsumexps (G, S) -> each item's round weight, softmax over its position's rounds.

    A softmax (max subtracted first), not exp(lse - logsumexp): a round where only the token itself
    is visible has lse near -1e5, where float32 steps are 0.008 apart."""
    g, s = lse.shape
    by_round = torch.empty_like(lse).scatter_(1, order, lse).view(g, s // tp, tp)  # unsorted (G, R, Tp)
    return by_round.softmax(dim=1).view(g, s).gather(1, order)


def _add_rows(total: Tensor, index: Tensor, src: Tensor) -> None:
    """total[index] += src for flat rows: index (G, A, B), src (G, A, B, E), read in src's memory
    order (the kernel returns (G, B, A, E) layouts), so nothing is copied first."""
    if not src.is_contiguous() and src.transpose(1, 2).is_contiguous():
        index, src = index.transpose(1, 2), src.transpose(1, 2)
    total.index_add_(0, index.flatten(), src.reshape(-1, src.shape[-1]))


def _groups(bh: int, n_blocks: int, per_block: int) -> list[tuple[slice, int, int]]:
    """(rows, first block, stop block) groups whose score blocks hold at most GROUP_ELEMENTS elements:
    several whole rows, or (long sequences) one row's blocks in a few ranges. Rows are slices, so the
    per-row tensors (codes, lse, bounds) are indexed by views, not copies."""
    per_row = n_blocks * per_block
    if per_row <= GROUP_ELEMENTS:
        splits = torch.arange(bh).tensor_split(max(1, bh * per_row // GROUP_ELEMENTS))
        return [(slice(int(rows[0]), int(rows[-1]) + 1), 0, n_blocks) for rows in splits]
    ranges = torch.arange(n_blocks).tensor_split(-(-per_row // GROUP_ELEMENTS))
    return [(slice(row, row + 1), int(r[0]), int(r[-1]) + 1) for row in range(bh) for r in ranges]
