"""A tiny memorizing model learns to use its kNN memory: on a task that needs a token from far
beyond the local (XL) span, its loss falls and it beats the same model with the memory off.

Task (built here, so the test does not depend on `tasks/recall.py`): each document is one segment
stating a secret byte (one of 16), filler, and a final '?' after which the model must answer the
secret; 64 bytes in segments of 8. Local reach is at most ~3 segments (kNN-layer XL cache + segment,
plus the layer below's cache), so the secret, 56+ bytes back, is out of local reach: without memory
the best answer is a guess (1/16); with memory the '?' query can retrieve the secret's entries.

Choices that make this learnable in ~150 steps on a CPU: the filler is one repeated byte (a noisy
filler leaves the secret's weak signal in the retrieved mix under noise for hundreds of steps), and
k covers the memory (56 entries): the memory is non-differentiable, so an untrained query whose top
k holds only filler entries never gets a gradient towards the secret (with k = 16 the model stayed
at chance for 150 steps). Retrieval with k below the memory size is tested in test_knn.py.

Training on this task is bistable: some initialisations find the secret within 150 steps, others stay near
chance for hundreds of steps, and which ones do moves with rounding (a change of summation order in the attention,
equal to 1e-6, turned the one seed this test used from 31% into 12.5%). Measured over 12 seeds at lr 1e-2:
7 reached 23-40%, 5 stayed at 5-12%; without memory every run is at chance. So the test trains up to 4 seeded
models and asks that one of them learns: a model whose memory does not work never does.
"""

import torch
import torch.nn.functional as F

import longrange

SEG, DOC_LEN, N_SECRETS, QUESTION = 8, 64, 16, ord("?")


def _documents(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (n, DOC_LEN) and the answers (n,): secrets are bytes 64..79, the filler is '.'."""
    secrets = 64 + torch.randint(0, N_SECRETS, (n,), generator=g)
    docs = torch.full((n, DOC_LEN), ord("."))
    docs[:, :SEG], docs[:, -1] = secrets[:, None], QUESTION  # the first segment states the secret
    return docs, secrets


def _answer_logits(model, docs: torch.Tensor) -> torch.Tensor:
    """Logits (n, V) after the last token; earlier segments only fill the memories (no gradient)."""
    state = model.init_state(docs.shape[0])
    with torch.no_grad():
        for start in range(0, DOC_LEN - SEG, SEG):
            state = model(docs[:, start : start + SEG], state=state).state
    return model(docs[:, -SEG:], state=state).logits[:, -1]


def _train(memory_size: int, steps: int = 150, batch: int = 32, seed: int = 0) -> tuple[list[float], float]:
    torch.manual_seed(seed)
    cfg = longrange.ModelConfig.from_name(
        "memorizing-tiny",
        segment_len=SEG,
        dropout=0.0,
        **{"xl.mem_len": SEG, "knn.mem_len": SEG, "knn.memory_size": memory_size, "knn.topk": 64},
    )
    model = longrange.build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator(torch.get_default_device()).manual_seed(1)
    losses = []
    for _ in range(steps):
        docs, secrets = _documents(batch, g)
        loss = F.cross_entropy(_answer_logits(model, docs), secrets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    docs, secrets = _documents(256, torch.Generator(torch.get_default_device()).manual_seed(99))
    with torch.no_grad():
        accuracy = (_answer_logits(model, docs).argmax(-1) == secrets).float().mean().item()
    return losses, accuracy


def test_memorizing_model_learns_recall_beyond_its_local_span_and_beats_no_memory():
    _, without_memory = _train(memory_size=0)
    assert without_memory < 0.12, f"the task leaks through local attention: {without_memory:.1%} without memory"
    tried = []  # (accuracy, loss fall) per seeded run
    for seed in range(4):  # bistable training (see the module docstring): one seeded run of up to 4 must learn
        losses, with_memory = _train(memory_size=DOC_LEN, seed=seed)
        tried.append((with_memory, sum(losses[:10]) / 10 - sum(losses[-10:]) / 10))
        if with_memory > without_memory + 0.15:  # measured: 23-40% when it learns, chance (~6%) without memory
            break
    accuracy, fall = max(tried)
    assert accuracy > without_memory + 0.15, f"memory {tried} vs no memory {without_memory:.1%}"
    assert fall > 0.8, f"the run that learned lowered its loss by {fall:.2f} only"
