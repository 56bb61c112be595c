"""`longrange generate`: streams tokens as they are sampled, echoes the prompt, refuses bad options in one line."""

import io
import math

import pytest
import torch

import longrange
from longrange.cli import main
from longrange.generate import NonFiniteLogits, check_sampling, generate, sample_next, stream_generate


@pytest.fixture
def run(tmp_path):
    return longrange.save(
        longrange.build_model(longrange.ModelConfig.from_name("transformer-xl-tiny", segment_len=16)), tmp_path / "run"
    )


class _Chunks(io.StringIO):
    """stdout that records what had been written at each flush."""

    def __init__(self):
        super().__init__()
        self.flushed = []

    def flush(self):
        self.flushed.append(self.getvalue())


def test_tokens_are_printed_as_they_are_sampled_after_the_echoed_prompt(run, monkeypatch):
    out = _Chunks()
    monkeypatch.setattr("sys.stdout", out)
    args = ["generate", str(run), "--prompt", "def f(", "--max-new-tokens", "6", "--seed", "1", "--temperature", "0"]
    assert main(args) == 0
    assert out.getvalue().startswith("def f(") and out.flushed[0] == "def f("
    assert len(out.flushed) >= 1 + 6  # the prompt, then one flush per token (a split character prints empty)
    expected = generate(longrange.load(run), list(b"def f("), 6, temperature=0)
    assert out.getvalue() == "def f(" + bytes(expected).decode("utf-8", errors="replace") + "\n"


def test_no_echo_prints_only_the_sample(run, capsys):
    args = ["generate", str(run), "--prompt", "PROMPT", "--max-new-tokens", "4", "--seed", "0", "--no-echo"]
    assert main(args) == 0
    assert "PROMPT" not in capsys.readouterr().out


def test_stream_generate_yields_before_the_end(run):
    model = longrange.load(run)
    tokens = stream_generate(model, list(b"abc"), 1000, seed=0)
    first = next(tokens)  # available without sampling the other 999
    assert 0 <= first < 256
    assert first == generate(model, list(b"abc"), 1, seed=0)[0]


@pytest.mark.parametrize(
    "option,value,message",
    [
        ("--max-new-tokens", "-5", "must be >= 0"),
        ("--top-p", "5", r"must be in \(0, 1\]"),
        ("--top-p", "0", r"must be in \(0, 1\]"),
        ("--temperature", "-1", "must be >= 0 \\(0 = greedy\\)"),
        ("--top-k", "0", "must be >= 1"),
    ],
)
def test_out_of_range_sampling_options_are_one_line(run, capsys, option, value, message):
    import re

    assert main(["generate", str(run), option, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and option in err and re.search(message, err)


def test_check_sampling_accepts_the_edges():
    check_sampling(0, 0.0, 1, 1.0)
    with pytest.raises(ValueError, match="temperature"):
        check_sampling(1, math.nan)


def test_a_directory_as_prompt_file_is_one_line(run, tmp_path, capsys):
    assert main(["generate", str(run), "--prompt-file", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["tpu9", "cuda"])
def test_unknown_or_unavailable_device_is_one_line(run, capsys, device):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["generate", str(run), "--device", device]) == 2
    assert f"--device {device!r}" in capsys.readouterr().err


def test_nan_weights_are_refused_before_sampling(tmp_path, capsys):
    model = longrange.build_model(longrange.ModelConfig.from_name("transformer-tiny"))
    with torch.no_grad():
        model.head.weight.fill_(float("nan"))
    longrange.save(model, tmp_path / "nan")
    assert main(["generate", str(tmp_path / "nan"), "--max-new-tokens", "3"]) == 2
    captured = capsys.readouterr()
    assert "NaN or infinite" in captured.err and captured.out == ""
    with pytest.raises(NonFiniteLogits):  # and logits that overflow at run time (e.g. fp16) are refused too
        sample_next(torch.tensor([0.0, math.nan]), temperature=1.0, top_k=None, top_p=None, generator=None)


def test_precision_option_runs_under_autocast(run, capsys):
    args = ["generate", str(run), "--max-new-tokens", "5", "--seed", "0", "--temperature", "0"]
    assert main([*args, "--precision", "bf16"]) == 0
    assert len(capsys.readouterr().out) > 1
