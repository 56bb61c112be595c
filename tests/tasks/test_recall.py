"""The long-range recall task: answers are where the parser says, and only memory can give them."""

import pytest
import torch

from longrange.tasks.recall import answer_positions, make_recall_documents, recall_accuracy


def _facts_and_queries(doc: bytes) -> tuple[dict[str, str], list[tuple[str, str]]]:
    text = doc.decode()
    facts = {f[-1]: f[:-1] for f in text.split("\n")[0].rstrip(";").split(";")}  # "47K" -> K: 47
    queries = [(q[0], q[1:]) for q in text.split("\n?")[1].strip().rstrip(";").split(";")]  # "K47" -> (K, 47)
    return facts, queries


def test_documents_are_deterministic_and_answers_repeat_the_facts():
    docs = make_recall_documents(3, 4, 200, seed=1)
    assert docs == make_recall_documents(3, 4, 200, seed=1)
    for doc in docs:
        facts, queries = _facts_and_queries(doc)
        assert len(facts) == 4 and sorted(k for k, _ in queries) == sorted(facts)
        assert all(facts[k] == v and len(v) == 2 for k, v in queries)
        assert b"?" not in doc.split(b"\n?")[0] and not any(chr(c).isupper() for c in doc.split(b"\n")[1])
        positions = answer_positions(doc)
        assert len(positions) == 8 and bytes(doc[p] for p in positions).decode() == "".join(v for _, v in queries)


def test_gap_length_is_exact_or_drawn_from_the_range():
    lengths = [len(d.split(b"\n")[1]) for d in make_recall_documents(50, 3, 120, seed=0)]
    assert set(lengths) == {120}
    lengths = [len(d.split(b"\n")[1]) for d in make_recall_documents(200, 3, 120, seed=0, min_gap=10)]
    assert min(lengths) >= 10 and max(lengths) <= 120 and len(set(lengths)) > 50


def test_answers_are_predictable_only_from_the_facts():
    """Same keys, filler and query order with other values: everything a model could read without the
    facts is identical, yet the answers change; and the answer digits are uniform whatever the key."""
    a = make_recall_documents(20, 4, 150, seed=3, values_seed=0)
    b = make_recall_documents(20, 4, 150, seed=3, values_seed=1)
    changed = 0
    for doc_a, doc_b in zip(a, b, strict=True):
        positions = answer_positions(doc_a)
        assert positions == answer_positions(doc_b)
        fact_digits = [i for i, c in enumerate(doc_a.split(b"\n")[0]) if chr(c).isdigit()]
        blind = set(positions) | set(fact_digits)  # the digits of the facts and of the answers
        assert all(doc_a[i] == doc_b[i] for i in range(len(doc_a)) if i not in blind)  # the rest is identical
        changed += sum(doc_a[p] != doc_b[p] for p in positions)
    assert changed > 0.8 * 20 * 8  # ~90% of the answer digits differ (chance of equality 10%)
    counts = torch.zeros(26, 10)
    for doc in make_recall_documents(2000, 4, 0, seed=4):
        for key, value in _facts_and_queries(doc)[1]:
            counts[ord(key) - 65, int(value[0])] += 1
    expected = counts.sum() / 260
    assert ((counts - expected).abs() / expected).max() < 0.6  # no key predicts its digit


def test_bad_arguments_are_refused():
    for kwargs in ({"n_facts": 0}, {"n_facts": 27}, {"digits": 0}, {"min_gap": 300}):
        args = {"n_docs": 1, "n_facts": 2, "gap_len": 100, **kwargs}
        with pytest.raises(ValueError):
            make_recall_documents(**args)


class _Oracle(torch.nn.Module):
    """Predicts every next byte correctly (it reads the document): recall accuracy must be 1."""

    stateful = False

    def __init__(self, doc: bytes):
        super().__init__()
        self.doc = doc
        self.config = type("C", (), {"segment_len": 64})()

    def init_state(self, *args, **kwargs):
        return None

    def forward(self, tokens, state=None, doc_start=None):
        if doc_start is not None and bool(doc_start[0]):
            self.offset = 0
        nxt = list(self.doc[self.offset + 1 : self.offset + 1 + tokens.shape[1]])
        nxt += [0] * (tokens.shape[1] - len(nxt))
        self.offset += tokens.shape[1]
        logits = torch.nn.functional.one_hot(torch.tensor([nxt]), 256).float()
        return type("O", (), {"logits": logits, "state": None})()


def test_oracle_scores_one():
    doc = make_recall_documents(1, 3, 150, seed=2)[0]
    assert recall_accuracy(_Oracle(doc), [doc], batch_size=1) == 1.0
