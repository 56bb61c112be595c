"""Batched generation: several prompts at once, each row with its own memories, equal to one by one."""

import pytest
import torch

import longrange
from longrange.generate import generate, generate_batch


@pytest.mark.parametrize("preset", ["transformer-xl-tiny", "memorizing-tiny", "transformer-tiny"])
def test_batched_greedy_generation_equals_one_by_one(preset):
    torch.manual_seed(0)
    model = longrange.build_model(longrange.ModelConfig.from_name(preset, segment_len=8)).eval()
    prompts = [list(b"def f(x):\n  return"), list(b"import os, sys\nxyz"), list(b"# a comment\n"), list(b"class A:")]
    assert len(prompts[0]) == len(prompts[1])  # two of them share a batch; the others run alone
    batched = generate_batch(model, prompts, 12, temperature=0)
    single = [generate(model, p, 12, temperature=0) for p in prompts]
    assert batched == single
    assert batched[0] != batched[1]  # the rows do not share memories


def test_batched_sampling_uses_seed_plus_index():
    torch.manual_seed(0)
    model = longrange.build_model(longrange.ModelConfig.from_name("transformer-xl-tiny", segment_len=8)).eval()
    prompts = [list(b"abcdef"), list(b"uvwxyz")]
    batched = generate_batch(model, prompts, 10, seed=5)
    assert batched == [generate(model, p, 10, seed=5 + i) for i, p in enumerate(prompts)]


def test_generate_command_samples_several_prompt_files(tmp_path, capsys):
    from longrange.cli import main

    torch.manual_seed(0)
    model = longrange.build_model(longrange.ModelConfig.from_name("transformer-xl-tiny", segment_len=8))
    longrange.save(model, tmp_path / "run")
    for name, text in {"a.txt": "first prompt", "b.txt": "the second one"}.items():
        (tmp_path / name).write_text(text)
    files = ["--prompt-file", str(tmp_path / "a.txt"), "--prompt-file", str(tmp_path / "b.txt")]
    assert main(["generate", str(tmp_path / "run"), *files, "--max-new-tokens", "5", "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    expected = generate_batch(model, [list(b"first prompt"), list(b"the second one")], 5, temperature=0)
    assert out.startswith(f"==> {tmp_path / 'a.txt'} <==\nfirst prompt")
    assert f"==> {tmp_path / 'b.txt'} <==\nthe second one" in out
    assert bytes(expected[1]).decode(errors="replace") in out
