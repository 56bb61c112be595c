"""The Compressive Transformer paper's attention-over-memory analysis.

For a trained compressive model, average attention weight (over heads, queries and segments of
held-out documents) by position bucket over the three regions a query sees: compressed memory,
memory and current segment, per layer. The paper's figure shows attention rising again on the
compressed memory: the model uses it.
"""

from __future__ import annotations

import torch

from longrange.attention.compressive import CompressiveAttention
from longrange.data.stream import DocumentStream
from longrange.model.lm import LongRangeLM


@torch.no_grad()
def attention_by_region(
    model: LongRangeLM, documents: list[bytes], buckets: int = 6, batch_size: int = 2, max_segments: int = 64
) -> dict:
    """Returns {"layers": [{"compressed": [...], "memory": [...], "segment": [...]}], ...}: mean attention
    weight per slot in each of `buckets` equal position buckets of each region (oldest first)."""
    layers = [b.attention for b in model.blocks if isinstance(b.attention, CompressiveAttention)]
    if not layers:
        raise ValueError("attention analysis needs a model with compressive layers (a compressive-* preset)")
    model.eval()
    for layer in layers:
        layer.record_attention = True
    totals = [
        {"compressed": torch.zeros(buckets), "memory": torch.zeros(buckets), "segment": torch.zeros(buckets)}
        for _ in layers
    ]
    counts = 0
    stream = DocumentStream(
        documents, min(batch_size, len(documents)), model.config.segment_len, shuffle=False, loop=False
    )
    state = model.init_state(stream.batch_size)
    try:
        for i, batch in enumerate(stream):
            out = model(batch.tokens, state=state, doc_start=batch.doc_start)
            state = out.state
            if i < 2:  # memories still filling: skip, as in the paper's steady-state analysis
                continue
            for layer, total in zip(layers, totals, strict=True):
                w = layer.last_attention["weights"].float().mean(dim=(0, 1, 2))  # (L,) per key slot
                s, m = layer.last_attention["cmem"], layer.last_attention["mem"]
                for name, part in (("compressed", w[:s]), ("memory", w[s : s + m]), ("segment", w[s + m :])):
                    if part.numel():
                        total[name] += torch.stack(
                            [c.mean() for c in part.chunk(buckets)]
                            + [torch.tensor(0.0)] * (buckets - len(part.chunk(buckets)))
                        )
            counts += 1
            if counts >= max_segments:
                break
    finally:
        for layer in layers:
            layer.record_attention, layer.last_attention = False, None
    return {
        "segments": counts,
        "buckets": buckets,
        "layers": [{k: (v / max(counts, 1)).tolist() for k, v in total.items()} for total in totals],
    }


def plot_attention_by_region(result: dict, path) -> None:
    import matplotlib  # loaded only to draw: its backend is chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): files only, no display

    fig, ax = plt.subplots(figsize=(9, 4))
    n = result["buckets"]
    for i, layer in enumerate(result["layers"]):
        values = layer["compressed"] + layer["memory"] + layer["segment"]
        ax.plot(range(len(values)), values, marker="o", label=f"layer {i}")
    for x, label in ((n - 0.5, "memory"), (2 * n - 0.5, "segment")):
        ax.axvline(x, color="grey", linestyle="--")
        ax.text(x + 0.1, ax.get_ylim()[1] * 0.95, label, fontsize=8)
    ax.set_xlabel("compressed memory | memory | current segment (oldest -> newest)")
    ax.set_ylabel("average attention weight per slot")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
