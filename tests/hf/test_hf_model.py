"""Every longrange system as a Hugging Face model: the same logits, tokens and scores as longrange's own programs.

Each system is a tiny preset at random weights (moved away from their initial scale, so greedy decoding does not
repeat one token), saved with `longrange.save`, exported with `export_hf` and loaded back with
`AutoModelForCausalLM.from_pretrained`: a local folder, no network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn

transformers = pytest.importorskip("transformers")

import longrange  # noqa: E402
from longrange.attention import register, unregister  # noqa: E402
from longrange.attention.base import AttentionModule, AttentionOutput  # noqa: E402
from longrange.cli import main  # noqa: E402
from longrange.config import ConfigError  # noqa: E402
from longrange.eval.evaluate import evaluate  # noqa: E402
from longrange.generate import generate, generate_batch  # noqa: E402
from longrange.hf import (  # noqa: E402
    CACHE_NAME,
    LongRangeCache,
    LongRangeConfig,
    LongRangeForCausalLM,
    export_hf,
    loglikelihood,
)
from longrange.memory.state import LayerState  # noqa: E402
from longrange.model.io import CheckpointError  # noqa: E402

SYSTEMS = ["transformer", "transformer-xl", "reformer", "luna", "compressive", "memorizing"]


def random_model(cfg: longrange.ModelConfig, seed: int = 0) -> longrange.LongRangeLM:
    torch.manual_seed(seed)
    model = longrange.build_model(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)  # large enough that greedy decoding varies its tokens
    return model


def exported(tmp_path, cfg: longrange.ModelConfig):
    """(the run's model as `longrange.load` reads it, the exported folder, the model transformers loads from it)"""
    longrange.save(random_model(cfg), tmp_path / "run")
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out)
    return longrange.load(tmp_path / "run").eval(), out, hf_model


def some_tokens(batch: int, length: int, seed: int = 1) -> Tensor:
    return torch.randint(0, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("system", SYSTEMS)
def test_export_round_trip_gives_the_runs_logits(system, tmp_path):
    run_model, out, hf_model = exported(tmp_path, longrange.ModelConfig.from_name(f"{system}-tiny"))
    assert isinstance(hf_model, LongRangeForCausalLM) and not hf_model.training
    assert json.loads((out / "config.json").read_text())["model_type"] == "longrange"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "generation_config.json", "model.safetensors"]
    assert hf_model.longrange_model.config == run_model.config
    tokens = some_tokens(2, 48)  # within one segment: one call of the run's model
    with torch.no_grad():
        expected = run_model(tokens).logits
        torch.testing.assert_close(hf_model(tokens).logits, expected, rtol=0, atol=0)
        # and back: longrange reads the export, and a folder transformers itself wrote
        torch.testing.assert_close(longrange.load(out).eval()(tokens).logits, expected, rtol=0, atol=0)
        hf_model.save_pretrained(tmp_path / "saved")
        torch.testing.assert_close(longrange.load(tmp_path / "saved").eval()(tokens).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize("system", SYSTEMS)
def test_greedy_generate_equals_longrange_generate(system, tmp_path):
    """A prompt longer than one segment (memories filled segment by segment, then one token at a time), alone and
    as two rows of one batch."""
    run_model, _, hf_model = exported(tmp_path, longrange.ModelConfig.from_name(f"{system}-tiny"))
    length = run_model.config.segment_len + 9
    prompts = some_tokens(2, length).tolist()
    expected = generate(run_model, prompts[0], 8, temperature=0)
    assert len(set(expected)) > 1  # a test of carried memories, not of one repeated token
    got = hf_model.generate(torch.tensor(prompts[:1]), max_new_tokens=8, do_sample=False)
    assert got[0, :length].tolist() == prompts[0]
    assert got[0, length:].tolist() == expected
    batch = hf_model.generate(torch.tensor(prompts), max_new_tokens=8, do_sample=False)
    assert batch[:, length:].tolist() == generate_batch(run_model, prompts, 8, temperature=0)


@pytest.mark.parametrize("system", SYSTEMS)
def test_loglikelihood_equals_longrange_eval_on_a_document_longer_than_the_segment(system, tmp_path):
    run_model, _, hf_model = exported(tmp_path, longrange.ModelConfig.from_name(f"{system}-tiny"))
    segment = run_model.config.segment_len
    document = bytes(some_tokens(1, 2 * segment + 17)[0].tolist())
    result = evaluate(run_model, [document], batch_size=1)
    assert result["tokens"] == len(document) - 1
    [(logprob, _)] = loglikelihood(hf_model, [(list(document[:1]), list(document[1:]))])
    assert -logprob == pytest.approx(result["loss"] * result["tokens"], rel=1e-5)


@pytest.mark.parametrize("system", ["transformer", "transformer-xl", "luna", "compressive", "memorizing"])
def test_a_continuation_after_a_context_of_several_segments_scores_as_eval_does(system, tmp_path):
    """The continuation's log-likelihood is `longrange eval`'s loss over its tokens: the document's total minus its
    context's (Reformer is left out: LSH buckets depend on the whole segment, so a shorter text hashes its earlier
    tokens differently and the context alone does not score as it does inside the document)."""
    run_model, _, hf_model = exported(tmp_path, longrange.ModelConfig.from_name(f"{system}-tiny"))
    segment = run_model.config.segment_len
    document = bytes(some_tokens(1, 3 * segment)[0].tolist())
    split = 2 * segment + 5

    def total_loss(text: bytes) -> float:
        result = evaluate(run_model, [text], batch_size=1)
        return result["loss"] * result["tokens"]

    [(logprob, greedy)] = loglikelihood(hf_model, [(list(document[:split]), list(document[split:]))])
    assert -logprob == pytest.approx(total_loss(document) - total_loss(document[:split]), rel=1e-5)
    assert greedy is False  # random text is not what the model would write
    # without its memories the continuation scores otherwise (the context is read, not dropped)
    if run_model.stateful:
        [(alone, _)] = loglikelihood(hf_model, [(list(document[split - 1 : split]), list(document[split:]))])
        assert alone != pytest.approx(logprob, rel=1e-4)


def test_labels_give_the_language_modelling_loss(tmp_path):
    run_model, _, hf_model = exported(tmp_path, longrange.ModelConfig.from_name("transformer-xl-tiny"))
    tokens = some_tokens(2, 40)
    with torch.no_grad():
        expected = run_model(tokens[:, :-1], targets=tokens[:, 1:]).loss
        torch.testing.assert_close(hf_model(tokens, labels=tokens).loss, expected)


def test_generation_continues_from_a_returned_cache(tmp_path):
    _, _, hf_model = exported(tmp_path, longrange.ModelConfig.from_name("memorizing-tiny"))
    prompt = some_tokens(1, 70)
    whole = hf_model.generate(prompt, max_new_tokens=6, do_sample=False)
    first = hf_model.generate(prompt, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
    cache = first[CACHE_NAME]
    assert isinstance(cache, LongRangeCache) and cache.seen_tokens == 70 + 2  # the last token is not read yet
    rest = hf_model.generate(first.sequences, max_new_tokens=3, do_sample=False, **{CACHE_NAME: cache})
    assert rest.tolist() == whole.tolist()


def test_what_generate_cannot_do_is_refused(tmp_path):
    _, _, hf_model = exported(tmp_path, longrange.ModelConfig.from_name("memorizing-tiny"))
    prompt = some_tokens(2, 10)
    padded = torch.ones_like(prompt)
    padded[0, :3] = 0
    with pytest.raises(ValueError, match="padding would enter the memories"):
        hf_model.generate(prompt, attention_mask=padded, max_new_tokens=2)
    with pytest.raises(ValueError, match="padding would enter the memories"):
        hf_model(prompt, attention_mask=padded)
    with pytest.raises(ValueError):  # transformers 5 names the supported modes; 4.x reaches our reorder refusal
        hf_model.generate(prompt, max_new_tokens=2, num_beams=2)
    with pytest.raises(ValueError, match="inputs_embeds"):
        hf_model(inputs_embeds=torch.zeros(1, 3, 64))


# ---------------------------------------------------------------------------- a plug-in mechanism


@dataclass
class PrefixMeanConfig:
    scale: float = 1.0


class PrefixMeanAttention(AttentionModule):
    """A stateful toy: each token reads the mean of every earlier token of its document, across segments."""

    stateful = True

    def __init__(self, d_model: int, n_heads: int, dropout: float, causal: bool, layer_index: int, scale: float):
        super().__init__()
        self.proj, self.scale = nn.Linear(d_model, d_model), scale

    def init_state(self, batch_size, device, dtype) -> LayerState:
        return LayerState(
            {
                "sum": torch.zeros(batch_size, self.proj.in_features, device=device, dtype=dtype),
                "count": torch.zeros(batch_size, 1, device=device, dtype=dtype),
            }
        )

    def forward(self, x: Tensor, *, state, doc_start, pad_mask=None, carry=None) -> AttentionOutput:
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        earlier = state["sum"][:, None] + x.cumsum(1) - x  # (B, T, D): sum of the tokens before each one
        count = state["count"][:, None] + torch.arange(x.shape[1], device=x.device, dtype=x.dtype)[None, :, None]
        out = self.proj(self.scale * earlier / count.clamp(min=1))
        new = state.replace(sum=state["sum"] + x.sum(1), count=state["count"] + x.shape[1])
        return AttentionOutput(out, new)


@pytest.fixture
def prefix_mean():
    register("prefixmean", PrefixMeanAttention, PrefixMeanConfig)
    yield
    unregister("prefixmean")


def test_a_plug_in_mechanism_registered_at_run_time(prefix_mean, tmp_path):
    cfg = longrange.ModelConfig(
        d_model=32, n_heads=2, layers=["prefixmean", "full"], segment_len=16, prefixmean={"scale": 2.0}
    )
    run_model, out, hf_model = exported(tmp_path, cfg)
    assert json.loads((out / "config.json").read_text())["longrange"]["prefixmean"] == {"scale": 2.0}
    assert hf_model.longrange_model.blocks[0].attention.scale == 2.0
    tokens = some_tokens(1, 40)
    with torch.no_grad():
        torch.testing.assert_close(hf_model(tokens[:, :16]).logits, run_model(tokens[:, :16]).logits, rtol=0, atol=0)
    prompt = tokens[0].tolist()
    assert hf_model.generate(tokens, max_new_tokens=6, do_sample=False)[0, 40:].tolist() == generate(
        run_model, prompt, 6, temperature=0
    )
    result = evaluate(run_model, [bytes(prompt)], batch_size=1)
    [(logprob, _)] = loglikelihood(hf_model, [(prompt[:1], prompt[1:])])
    assert -logprob == pytest.approx(result["loss"] * result["tokens"], rel=1e-5)
    unregister("prefixmean")  # a config that names a mechanism nobody registered is one clear error
    with pytest.raises(ConfigError, match=r"\['prefixmean'\]: a plug-in mechanism must be registered"):
        transformers.AutoModelForCausalLM.from_pretrained(out)
    register("prefixmean", PrefixMeanAttention, PrefixMeanConfig)


# ---------------------------------------------------------------------------- the command line and longrange.load


def test_export_command_and_reading_the_folder_back(tmp_path, capsys):
    longrange.save(random_model(longrange.ModelConfig.from_name("transformer-xl-tiny")), tmp_path / "run")
    out = tmp_path / "hf"
    assert main(["export", "hf", str(tmp_path / "run"), str(out)]) == 0
    assert "config.json + model.safetensors" in capsys.readouterr().out
    assert isinstance(transformers.AutoModelForCausalLM.from_pretrained(out), LongRangeForCausalLM)
    assert isinstance(transformers.AutoConfig.from_pretrained(out), LongRangeConfig)
    assert main(["generate", str(out), "--prompt", "abc", "--max-new-tokens", "3", "--temperature", "0"]) == 0
    # a non-empty folder, a run without a checkpoint: one line each, nothing written
    assert main(["export", "hf", str(tmp_path / "run"), str(out)]) == 2
    assert "is not empty" in capsys.readouterr().err
    assert main(["export", "hf", str(tmp_path / "nothing"), str(tmp_path / "hf2")]) == 2
    err = capsys.readouterr().err
    assert "holds no checkpoint" in err and "Traceback" not in err and not (tmp_path / "hf2").exists()
    assert main(["export", "hf", str(tmp_path / "run"), str(out), "--overwrite"]) == 0


def test_train_init_from_an_export(tmp_path, corpus_dir):
    from longrange.train import TrainConfig, train

    cfg = longrange.ModelConfig.from_name("transformer-xl-tiny")
    source = random_model(cfg)
    longrange.save(source, tmp_path / "run")
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    # one step at a learning rate of 1e-6 moves each weight by about that; a fresh start is 0.1 away (random_model)
    train_cfg = TrainConfig(steps=1, lr=1e-6, min_lr=0.0, batch_size=1, warmup_steps=0, progress=False)
    tuned = longrange.load(train(cfg, train_cfg, corpus_dir, tmp_path / "tuned", init_from=out)).state_dict()
    for name, tensor in source.state_dict().items():
        torch.testing.assert_close(tuned[name], tensor, rtol=0, atol=1e-4, msg=name)


def test_a_folder_of_another_model_is_one_clear_error(tmp_path):
    longrange.save(random_model(longrange.ModelConfig.from_name("transformer-tiny")), tmp_path / "m")
    (tmp_path / "m" / "config.yaml").unlink()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "reformer"}))
    with pytest.raises(ConfigError, match="model_type 'reformer'.*convert hf-reformer"):
        longrange.load(tmp_path / "m")
    (tmp_path / "m" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        longrange.load(tmp_path / "m")


@pytest.fixture
def corpus_dir(tmp_path):
    root = tmp_path / "corpus"
    root.mkdir()
    for i in range(8):
        (root / f"d{i}.txt").write_bytes(f"document {i}: the quick brown fox\n".encode() * 20)
    return str(root)


def test_a_subword_runs_tokenizer_travels_with_the_export(tmp_path):
    pytest.importorskip("tokenizers")
    from longrange.data.tokenizer import BPETokenizer, load_run_tokenizer, save_run_tokenizer

    tokenizer = BPETokenizer.train([b"the quick brown fox jumps over the lazy dog " * 20], 300)
    longrange.save(random_model(longrange.ModelConfig.from_name("transformer-tiny", vocab_size=300)), tmp_path / "run")
    save_run_tokenizer(tmp_path / "run", tokenizer)
    out = export_hf(tmp_path / "run", tmp_path / "hf")
    assert load_run_tokenizer(out).identity == tokenizer.identity
    assert transformers.AutoConfig.from_pretrained(out).vocab_size == 300
