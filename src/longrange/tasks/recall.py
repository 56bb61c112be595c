"""Long-range recall: facts early in a document, queried after a long gap of filler.

A document reads::

    FACTS
    k=QZXB v=4812;
    ...                          (n_facts facts)
    <filler: gap_len bytes of random lowercase words>
    QUERIES
    k=QZXB v=4812;               (every fact again, shuffled)

The answer digits of the query section are predictable only by recalling the facts from before
the gap, so a model whose memory spans less than the gap is at chance (~10% per digit) and one
whose memory reaches the facts can approach 100%. This is the memory papers' core claim in a
test that needs no external data; the gap is chosen longer than the XL span and within the
compressed span or the kNN memory.
"""

from __future__ import annotations

import random
import re

import torch

from longrange.data.stream import DocumentStream
from longrange.model.lm import LongRangeLM

_QUERY = re.compile(rb"k=[A-Z]{4} v=(\d{4});")
_WORDS = ["the", "of", "and", "memory", "segment", "token", "model", "long", "range", "layer", "state", "value"]


def make_recall_documents(n_docs: int, n_facts: int, gap_len: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    docs = []
    for _ in range(n_docs):
        keys = set()
        while len(keys) < n_facts:
            keys.add("".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(4)))
        facts = [(k, f"{rng.randrange(10_000):04d}") for k in sorted(keys)]
        rng.shuffle(facts)
        filler = []
        while sum(len(w) + 1 for w in filler) < gap_len:
            filler.append(rng.choice(_WORDS))
        queries = facts[:]
        rng.shuffle(queries)
        text = "FACTS\n" + "".join(f"k={k} v={v};\n" for k, v in facts)
        text += " ".join(filler)[:gap_len] + "\nQUERIES\n" + "".join(f"k={k} v={v};\n" for k, v in queries)
        docs.append(text.encode())
    return docs


def answer_positions(document: bytes) -> list[int]:
    """Byte offsets of the answer digits in the query section."""
    start = document.index(b"\nQUERIES\n")
    return [p for m in _QUERY.finditer(document, start) for p in range(m.start(1), m.end(1))]


@torch.no_grad()
def recall_accuracy(
    model: LongRangeLM,
    documents: list[bytes],
    segment_len: int | None = None,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
) -> float:
    """Greedy (teacher-forced) accuracy on the answer digits, state carried across segments."""
    model.eval()
    segment_len = segment_len or model.config.segment_len
    correct = total = 0
    for first in range(0, len(documents), batch_size):
        group = documents[first : first + batch_size]
        stream = DocumentStream(group, len(group), segment_len, shuffle=False, loop=False)
        state = model.init_state(len(group), device) if model.stateful else None
        predictions = []
        for batch in stream:
            out = model(batch.tokens.to(device), state=state, doc_start=batch.doc_start.to(device))
            state = out.state if model.stateful else None
            predictions.append(out.logits.argmax(-1).cpu())
        predicted = torch.cat(predictions, dim=1)  # (rows, padded length): prediction for byte p+1 at p
        for row, doc in enumerate(group):
            positions = torch.tensor(answer_positions(doc))
            target = torch.tensor(list(doc))[positions]
            correct += int((predicted[row, positions - 1] == target).sum())
            total += len(positions)
    return correct / max(total, 1)
