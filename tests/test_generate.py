"""Generation: reproducible with a seed; streaming equals recomputation; greedy equals argmax."""

import torch

import longrange
from longrange.generate import carries_state, generate, sample_next


def _model(name: str, **overrides):
    return longrange.build_model(longrange.ModelConfig.from_name(name, **overrides)).eval()


def test_same_seed_same_sample():
    model = _model("transformer-xl-tiny")
    prompt = list(b"def main():\n")
    a = generate(model, prompt, 20, top_k=10, seed=3)
    assert a == generate(model, prompt, 20, top_k=10, seed=3)
    assert a != generate(model, prompt, 20, top_k=10, seed=4)


def test_xl_streaming_prompt_and_cached_decoding_equal_recomputation():
    """Greedy tokens from the carried state == argmax of a one-pass forward over prompt + generated."""
    model = _model("transformer-xl-tiny", **{"xl.mem_len": 256, "segment_len": 16})
    prompt = torch.randint(0, 256, (70,)).tolist()  # streamed in 5 segments of 16
    tokens = generate(model, prompt, 12, temperature=0)
    sequence = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logits = model(sequence).logits[0]
    expected = logits[len(prompt) - 1 : -1].argmax(-1).tolist()
    assert tokens == expected


def test_stateless_model_recomputes_over_its_window():
    model = _model("transformer-tiny", segment_len=32)
    prompt = torch.randint(0, 256, (50,)).tolist()
    tokens = generate(model, prompt, 5, temperature=0)
    context = prompt
    for token in tokens:
        with torch.no_grad():
            expected = model(torch.tensor([context[-32:]])).logits[0, -1].argmax()
        assert token == int(expected)
        context = context + [token]


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([5.0, 4.0, 1.0, -3.0])
    g = torch.Generator().manual_seed(0)
    top1 = {sample_next(logits, temperature=1.0, top_k=1, top_p=None, generator=g) for _ in range(20)}
    assert top1 == {0}
    nucleus = {sample_next(logits, temperature=1.0, top_k=None, top_p=0.6, generator=g) for _ in range(50)}
    assert nucleus == {0}  # p(0) ~ 0.72 already covers 0.6
    wide = {sample_next(logits, temperature=1.0, top_k=None, top_p=0.99, generator=g) for _ in range(200)}
    assert wide == {0, 1, 2}


def _reformer():
    """Reversible, mixed local/LSH layers; few buckets and short chunks so buckets overflow a chunk."""
    overrides = {"lsh.bucket_size": 4, "lsh.n_buckets": 4, "lsh.n_hashes": 2, "local.chunk_len": 8}
    return _model("reformer-tiny", layers=["local", "lsh", "local", "lsh"], **overrides)


def test_reformer_cached_generation_equals_recomputation():
    model = _reformer()
    assert model.reversible and carries_state(model)
    prompt = torch.randint(0, 256, (37,)).tolist()  # streamed in segments of 16: fresh pass, then the caches
    calls = []
    hook = model.embed.register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[1]))
    greedy = generate(model, prompt, 12, temperature=0, segment_len=16)
    hook.remove()
    assert calls == [16, 16, 5] + [1] * 12  # one token per step: nothing is recomputed
    with torch.no_grad():
        logits = model(torch.tensor([prompt + greedy])).logits[0]
    assert greedy == logits[len(prompt) - 1 : -1].argmax(-1).tolist()

    sampled = generate(model, prompt, 12, top_k=20, seed=5, segment_len=16)
    g = torch.Generator().manual_seed(5)
    context = list(prompt)
    for token in sampled:  # the same draws from the full sequence recomputed at every step
        with torch.no_grad():
            logits = model(torch.tensor([context])).logits[0, -1]
        assert token == sample_next(logits, temperature=1.0, top_k=20, top_p=None, generator=g)
        context.append(token)


def test_reformer_with_automatic_bucket_count_recomputes_its_window():
    model = _model("reformer-tiny", segment_len=32, **{"lsh.n_buckets": None})
    assert not carries_state(model)
    prompt = torch.randint(0, 256, (40,)).tolist()
    tokens = generate(model, prompt, 3, temperature=0)
    with torch.no_grad():
        expected = model(torch.tensor([prompt[-32:]])).logits[0, -1].argmax()
    assert tokens[0] == int(expected)
