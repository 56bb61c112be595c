"""Bits per byte over whole held-out documents, with state carried across segments.

Every document is read from its start, segment by segment, each batch row walking its own
documents (`DocumentStream` with ``loop=False``); stateful models carry their memories across the
segments of a document and clear them at each new document. Besides the mean, the loss is
reported by position in the document (log2-spaced buckets of the target's byte offset), the curve
that shows whether a model uses long context.

`check_result` is what a report of the result must pass: a non-finite loss, or one far worse than a
uniform guess over the vocabulary, comes from broken weights (a diverged run), never from a model, and
is refused instead of being printed as a number.

With a subword tokenizer the documents carry ``token_bytes`` (bytes per token id, see
`longrange.data.tokenizer`): bits per byte are the total loss over the bytes the predicted tokens cover,
``sum(nats) / (sum(token_bytes[targets]) * ln 2)``, so systems and tokenizers compare on one scale; the
per-token loss and perplexity are reported beside them (the papers' word/token perplexities). For bytes
both definitions coincide: ``bpb = loss / ln 2``. Positions are then counted in tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from longrange.data.stream import IGNORE_INDEX, DocumentStream
from longrange.data.token_store import TokenDocuments
from longrange.model.lm import LongRangeLM
from longrange.runtime import autocast, maybe_compile, resolve_precision

# bits per byte above log2(vocab) + this many bits are refused by `check_result` unless allowed. A model no
# better than uniform scores log2(vocab) (an untrained one, within a few hundredths); a sound model scores
# more only on text unlike its training data (e.g. a code model on non-Latin text), which must be allowed.
IMPLAUSIBLE_MARGIN_BITS = 1.0


class ImplausibleResult(ValueError):
    """An evaluation result that cannot come from sound weights (NaN, infinite, far worse than uniform)."""


def check_result(result: dict, vocab_size: int, *, allow_worse_than_uniform: bool = False) -> None:
    """Raise ImplausibleResult (one line) for a non-finite result or, unless allowed, one worse than a
    uniform guess over `vocab_size` by more than IMPLAUSIBLE_MARGIN_BITS bits per byte."""
    bpb = result["bpb"]
    tokens_per_byte = result["tokens"] / result["bytes"] if result.get("bytes") else 1.0
    if not math.isfinite(bpb) or not math.isfinite(result["loss"]):
        raise ImplausibleResult(
            f"the evaluation gave {bpb} bits per byte: the model's outputs are not finite "
            "(diverged weights, or overflow in --precision fp16); no result is reported"
        )
    uniform = math.log2(vocab_size) * tokens_per_byte  # a uniform guess per token, spread over its bytes
    if bpb > uniform + IMPLAUSIBLE_MARGIN_BITS and not allow_worse_than_uniform:
        raise ImplausibleResult(
            f"the evaluation gave {bpb:.4f} bits per byte, worse than a uniform guess over {vocab_size} tokens "
            f"({uniform:.2f}): the weights are likely broken (a diverged run); pass "
            "--allow-worse-than-uniform if the text is unlike the training data"
        )


def count_segments(stream: DocumentStream) -> int:
    """How many batches a non-looping stream yields: the longest row's segments."""
    return max(stream.segments_per_row(), default=0)


@torch.no_grad()
def evaluate(
    model: LongRangeLM,
    documents: list[bytes] | TokenDocuments,
    *,
    batch_size: int = 4,
    segment_len: int | None = None,
    device: str | torch.device = "cpu",
    max_segments: int | None = None,
    precision: str = "fp32",
    compile: bool = False,
    progress: bool = False,
) -> dict:
    """Returns ``{"bpb", "loss", "perplexity", "tokens", "bytes", "segments", "by_position": [...]}``.

    ``loss`` is nats per predicted token and ``perplexity`` its exponential; ``bpb`` is the total loss over the
    bytes the predicted tokens cover, in bits (for bytes: ``loss / ln 2``). ``by_position`` lists buckets
    ``{"start", "end", "tokens", "bpb"}`` of target positions [2^i, 2^(i+1)) in the document.
    ``max_segments`` caps the work (a partial evaluation, for periodic validation during training).
    ``precision`` ("fp32", "bf16", "fp16") runs the model under autocast (losses are taken in fp32); "auto"
    decides by the device and the model (`resolve_precision`), and the result's ``precision`` says which;
    ``compile`` runs it through `torch.compile`; ``progress`` shows a progress bar (stderr) over segments.
    """
    if not documents:
        raise ValueError("no documents to evaluate")
    was_training = model.training
    model.eval()
    segment_len = segment_len or model.config.segment_len
    batch_size = min(batch_size, len(documents))
    stream = DocumentStream(documents, batch_size, segment_len, shuffle=False, loop=False)
    state = model.init_state(batch_size, device) if model.stateful else None
    forward = maybe_compile(model, compile)
    device_type = torch.device(device)
    precision = resolve_precision(precision, device_type, model.config)
    total = count_segments(stream)
    bar = tqdm(total=min(total, max_segments or total), unit="segment", disable=not progress, desc="eval")
    # the bookkeeping is host-side, on the CPU whatever torch's default device is
    n_buckets = 40
    bucket_loss = torch.zeros(n_buckets, dtype=torch.float64, device="cpu")
    bucket_count = torch.zeros(n_buckets, dtype=torch.float64, device="cpu")
    bucket_bytes = torch.zeros(n_buckets, dtype=torch.float64, device="cpu")
    table = getattr(documents, "token_bytes", None)  # (V,) bytes per token id; None: one byte per token
    table = None if table is None else torch.as_tensor(table, dtype=torch.float64, device="cpu")
    position = torch.zeros(batch_size, dtype=torch.long, device="cpu")  # offset of each row's segment in its document
    segments = 0
    for batch in stream:
        tokens, targets = batch.tokens.to(device), batch.targets.to(device)
        with autocast(device_type, precision):
            out = forward(tokens, state=state, doc_start=batch.doc_start.to(device))
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
        target_pos = position[:, None] + torch.arange(1, segment_len + 1, device="cpu")  # byte offset of each target
        bucket = target_pos.float().log2().floor().long().clamp(max=n_buckets - 1)
        real = batch.targets != IGNORE_INDEX
        bucket_loss.index_add_(0, bucket[real], losses[real])
        bucket_count.index_add_(0, bucket[real], torch.ones_like(losses[real]))
        covered = torch.ones_like(losses[real]) if table is None else table[batch.targets[real]]
        bucket_bytes.index_add_(0, bucket[real], covered)
        position = position + segment_len
        segments += 1
        bar.update()
        if max_segments is not None and segments >= max_segments:
            break
    bar.close()
    model.train(was_training)
    tokens, num_bytes = int(bucket_count.sum()), int(bucket_bytes.sum())
    loss = float(bucket_loss.sum() / max(tokens, 1))
    bpb = float(bucket_loss.sum() / max(num_bytes, 1) / math.log(2))
    by_position = [
        {
            "start": 2**i,
            "end": 2 ** (i + 1),
            "tokens": int(bucket_count[i]),
            "bpb": float(bucket_loss[i] / bucket_bytes[i] / math.log(2)),
        }
        for i in range(n_buckets)
        if bucket_count[i] > 0
    ]
    return {
        "bpb": bpb,
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "tokens": tokens,
        "bytes": num_bytes,
        "segments": segments,
        "precision": precision,
        "by_position": by_position,
    }
