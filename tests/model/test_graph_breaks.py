"""`torch.compile` sees each system's training forward as one graph: no graph break a user pays every step.

The one exception is stated where it happens: a reversible stack records and replays RNG states per block
(`model/reversible.py`, `_RecordedRNG`), a break per block; the same Reformer with plain blocks is one graph.
"""

import pytest
import torch
import torch._dynamo as dynamo

import longrange

SYSTEMS = [
    ("transformer-tiny", {}),
    ("transformer-xl-tiny", {}),
    ("luna-tiny", {}),
    ("compressive-tiny", {}),
    ("memorizing-tiny", {"knn.memory_size": 64}),
    ("reformer-tiny", {"reversible": False}),
]


@pytest.mark.parametrize(("preset", "overrides"), SYSTEMS, ids=[p for p, _ in SYSTEMS])
def test_training_forward_traces_without_graph_breaks(preset, overrides):
    model = longrange.build_model(longrange.ModelConfig.from_name(preset).replace(**overrides)).train()
    length = 256 if preset.startswith("reformer") else 64
    tokens = torch.randint(0, 256, (2, length))
    state = model.init_state(2) if model.stateful else None
    # a fresh state, then the state after one segment: memories hold entries, so the kNN layer searches its store
    for memories in ("empty", "filled"):
        try:
            explain = dynamo.explain(model)
            explained = explain(tokens, state=state, doc_start=torch.tensor([True, False]), targets=tokens)
        finally:
            dynamo.reset()
        breaks = "; ".join(map(_where, explained.break_reasons))
        assert explained.graph_break_count == 0, f"memories {memories}: {breaks}"
        if state is None:
            break
        state = model(tokens, state=state, targets=tokens).state.detach()


def _where(graph_break) -> str:
    """A break's whole reason and the frame of ours it happened in (the first line alone can be empty)."""
    ours = [f for f in graph_break.user_stack if "longrange" in f.filename] or graph_break.user_stack
    frame = f"{ours[-1].filename.rsplit('/', 1)[-1]}:{ours[-1].lineno} ({ours[-1].name}): " if ours else ""
    return frame + " | ".join(line.strip() for line in graph_break.reason.splitlines() if line.strip())[:400]
