"""The long-range recall task: answers are where the parser says, and only memory can give them."""

import torch

from longrange.tasks.recall import answer_positions, make_recall_documents, recall_accuracy


def test_documents_are_deterministic_and_answers_repeat_the_facts():
    docs = make_recall_documents(3, 4, 200, seed=1)
    assert docs == make_recall_documents(3, 4, 200, seed=1)
    for doc in docs:
        text = doc.decode()
        facts = dict(line[2:].rstrip(";").split(" v=") for line in text.split("\n")[1:5])
        queries = text.split("QUERIES\n")[1]
        for line in queries.strip().split("\n"):
            key, value = line[2:].rstrip(";").split(" v=")
            assert facts[key] == value
        assert len(answer_positions(doc)) == 16


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
