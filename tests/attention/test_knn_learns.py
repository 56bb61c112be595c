"""A tiny memorizing model learns to use its kNN memory: on a task that needs a token from far
beyond the local (XL) span, its loss falls and it beats the same model with the memory off.

Task (built here, so the test does not depend on `tasks/recall.py`): each document is one segment
stating a secret byte (one of 16), filler, and a final '?' after which the model must answer the
secret; 40 bytes in segments of 8. Local reach is at most ~3 segments (kNN-layer XL cache + segment,
plus the layer below's cache: 24 bytes), so the secret, 32+ bytes back, is out of local reach: without memory
the best answer is a guess (1/16); with memory the '?' query can retrieve the secret's entries.

Choices that make this learnable on a CPU: the filler is one repeated byte (a noisy filler leaves the secret's
weak signal in the retrieved mix under noise for hundreds of steps), and k covers the memory (32 entries): the
memory is non-differentiable, so an untrained query whose top k holds only filler entries never gets a gradient
towards the secret (with k = 16 the model stayed at chance for 150 steps). Retrieval with k below the memory size
is tested in test_knn.py.

Training on this task is bistable: a run finds the secret, or its query settles on the filler entries (the secret
entries then get less than their uniform share of the weight) and it stays near chance; which runs do moves with
rounding, so a seed that learns on the CPU need not on a GPU (the 4 seeded runs of an earlier setting reached
12.5%, 12.5%, 2% and 5% on CUDA). Measured on the CPU, 8 seeds each (data and weights seeded), the share of runs
that learned: d_model 64, 64-byte documents, 150 steps at lr 1e-2: 1 of 8; 40-byte documents (the secret's 8
entries a quarter of the memory, not a seventh): 3 of 8; and d_model 128 with 300 steps decaying from lr 1e-2
to 1e-3: 7 of 8, reaching 26-87% (the eighth 19%); without memory 4-7%. So the test trains up to 4 seeded runs of
that setting and asks that one learns: a model whose memory does not work never does. The data and the initial
weights are drawn on the CPU and moved to the default device, so a seed means the same run on any device.
"""

import torch
import torch.nn.functional as F

import longrange

SEG, DOC_LEN, N_SECRETS, QUESTION = 8, 40, 16, ord("?")
STEPS, LR, FINAL_LR = 300, 1e-2, 1e-3


def _documents(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (n, DOC_LEN) and the answers (n,) on the default device, drawn by `g` on the CPU: secrets are bytes
    64..79, the filler is '.'."""
    secrets = 64 + torch.randint(0, N_SECRETS, (n,), generator=g, device="cpu")
    docs = torch.full((n, DOC_LEN), ord("."), device="cpu")
    docs[:, :SEG], docs[:, -1] = secrets[:, None], QUESTION  # the first segment states the secret
    device = torch.get_default_device()
    return docs.to(device), secrets.to(device)


def _answer_logits(model, docs: torch.Tensor) -> torch.Tensor:
    """Logits (n, V) after the last token; earlier segments only fill the memories (no gradient)."""
    state = model.init_state(docs.shape[0])
    with torch.no_grad():
        for start in range(0, DOC_LEN - SEG, SEG):
            state = model(docs[:, start : start + SEG], state=state).state
    return model(docs[:, -SEG:], state=state).logits[:, -1]


def _train(memory_size: int, seed: int = 0) -> tuple[list[float], float]:
    torch.manual_seed(seed)
    cfg = longrange.ModelConfig.from_name(
        "memorizing-tiny",
        d_model=128,
        segment_len=SEG,
        dropout=0.0,
        **{"xl.mem_len": SEG, "knn.mem_len": SEG, "knn.memory_size": memory_size, "knn.topk": 64},
    )
    with torch.device("cpu"):  # the CPU's generator: the same initial weights on any device
        model = longrange.build_model(cfg)
    model.to(torch.get_default_device())
    opt = torch.optim.AdamW(model.parameters(), lr=LR)
    # cosine decay from LR to FINAL_LR over the run
    decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=FINAL_LR)
    g = torch.Generator().manual_seed(100 + seed)
    losses = []
    for _ in range(STEPS):
        docs, secrets = _documents(32, g)
        loss = F.cross_entropy(_answer_logits(model, docs), secrets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
        losses.append(loss.item())
    model.eval()
    docs, secrets = _documents(256, torch.Generator().manual_seed(99))
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
        if with_memory > without_memory + 0.15:  # measured: 26-87% when it learns, chance (4-7%) without memory
            break
    accuracy, fall = max(tried)
    assert accuracy > without_memory + 0.15, f"memory {tried} vs no memory {without_memory:.1%}"
    assert fall > 0.8, f"the run that learned lowered its loss by {fall:.2f} only"
