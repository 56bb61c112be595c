"""Bits per byte over whole held-out documents, with state carried across segments.

Every document is read from its start, segment by segment, each batch row walking its own
documents (`DocumentStream` with ``loop=False``); stateful models carry their memories across the
segments of a document and clear them at each new document. Besides the mean, the loss is
reported by position in the document (log2-spaced buckets of the target's byte offset), the curve
that shows whether a model uses long context.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from longrange.data.stream import IGNORE_INDEX, DocumentStream
from longrange.model.lm import LongRangeLM


@torch.no_grad()
def evaluate(
    model: LongRangeLM,
    documents: list[bytes],
    *,
    batch_size: int = 4,
    segment_len: int | None = None,
    device: str | torch.device = "cpu",
    max_segments: int | None = None,
) -> dict:
    """Returns ``{"bpb", "loss", "perplexity", "tokens", "segments", "by_position": [...]}``.

    ``loss`` is nats per predicted byte; ``bpb = loss / ln 2``. ``by_position`` lists buckets
    ``{"start", "end", "tokens", "bpb"}`` of target positions [2^i, 2^(i+1)) in the document.
    ``max_segments`` caps the work (a partial evaluation, for periodic validation during training).
    """
    if not documents:
        raise ValueError("no documents to evaluate")
    was_training = model.training
    model.eval()
    segment_len = segment_len or model.config.segment_len
    batch_size = min(batch_size, len(documents))
    stream = DocumentStream(documents, batch_size, segment_len, shuffle=False, loop=False)
    state = model.init_state(batch_size, device) if model.stateful else None
    n_buckets = 40
    bucket_loss = torch.zeros(n_buckets, dtype=torch.float64)
    bucket_count = torch.zeros(n_buckets, dtype=torch.float64)
    position = torch.zeros(batch_size, dtype=torch.long)  # offset of each row's segment in its document
    segments = 0
    for batch in stream:
        tokens, targets = batch.tokens.to(device), batch.targets.to(device)
        out = model(tokens, state=state, doc_start=batch.doc_start.to(device))
        if model.stateful:
            state = out.state
        losses = (
            F.cross_entropy(
                out.logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="none"
            )
            .view_as(targets)
            .cpu()
            .double()
        )
        position = torch.where(batch.doc_start, 0, position)
        target_pos = position[:, None] + torch.arange(1, segment_len + 1)  # byte offset of each target
        bucket = target_pos.float().log2().floor().long().clamp(max=n_buckets - 1)
        real = batch.targets != IGNORE_INDEX
        bucket_loss.index_add_(0, bucket[real], losses[real])
        bucket_count.index_add_(0, bucket[real], torch.ones_like(losses[real]))
        position = position + segment_len
        segments += 1
        if max_segments is not None and segments >= max_segments:
            break
    model.train(was_training)
    tokens = int(bucket_count.sum())
    loss = float(bucket_loss.sum() / max(tokens, 1))
    by_position = [
        {
            "start": 2**i,
            "end": 2 ** (i + 1),
            "tokens": int(bucket_count[i]),
            "bpb": float(bucket_loss[i] / bucket_count[i] / math.log(2)),
        }
        for i in range(n_buckets)
        if bucket_count[i] > 0
    ]
    return {
        "bpb": loss / math.log(2),
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "tokens": tokens,
        "segments": segments,
        "by_position": by_position,
    }
