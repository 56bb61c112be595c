"""Input that used to end in a traceback, a hang or a silent exit 0 is one line and a non-zero exit: Ctrl-C outside
the training loop, configs nested too deeply, names that are not UTF-8, an --output that cannot be written."""

import json

import pytest

import longrange
from longrange.cli import main
from longrange.commands import eval as eval_command
from longrange.commands import generate as generate_command
from longrange.config import ConfigError, load_yaml_text
from longrange.data.corpus import load_corpus

DEEP = "[" * 10_000 + "]" * 10_000  # 20 KB, far under the 1 MiB cap


def _run(tmp_path, corpus_dir):
    run = tmp_path / "run"
    longrange.save(
        longrange.build_model(longrange.ModelConfig.from_name("transformer-tiny", segment_len=16)), run / "checkpoint"
    )
    (run / "corpus.json").write_text(json.dumps({"spec": str(corpus_dir), **load_corpus(str(corpus_dir)).manifest}))
    return run


def test_yaml_nested_too_deeply_is_a_config_error():
    with pytest.raises(ConfigError, match="--set x is nested too deeply"):
        load_yaml_text(DEEP, "--set x")


def test_deep_set_and_deep_config_file_are_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "a"), "--set", f"xl.mem_len={DEEP}"]) == 2
    err = capsys.readouterr().err
    assert "nested too deeply" in err and "Traceback" not in err
    config = tmp_path / "deep.yaml"
    config.write_text("model:\n  layers: " + DEEP + "\n")
    assert main(["train", "--out", str(tmp_path / "b"), "--config", str(config)]) == 2
    assert "nested too deeply" in capsys.readouterr().err


def test_ctrl_c_during_eval_is_one_line_and_exit_130(tmp_path, corpus_dir, capsys, monkeypatch):
    run = _run(tmp_path, corpus_dir)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(eval_command, "evaluate", interrupted)
    assert main(["eval", str(run), "--split", "train", "--docs", "1", "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert err.strip() == "longrange eval: interrupted" and not list(run.glob("eval-*.json"))


def test_ctrl_c_during_generate_keeps_what_was_printed_and_exits_130(tmp_path, corpus_dir, capsys, monkeypatch):
    run = _run(tmp_path, corpus_dir)

    def sampled_then_interrupted(model, prompt, max_new_tokens, **options):
        yield from b"abc\xc3"  # the last byte starts a two-byte character that never comes
        raise KeyboardInterrupt

    monkeypatch.setattr(generate_command, "stream_generate", sampled_then_interrupted)
    assert main(["generate", str(run), "--prompt", "> ", "--max-new-tokens", "10"]) == 130
    captured = capsys.readouterr()
    assert captured.out == "> abc\ufffd\n"  # kept, the torn character flushed as U+FFFD, the line ended
    assert captured.err.strip() == "longrange generate: interrupted"


def test_ctrl_c_during_start_up_is_one_line(tmp_path, capsys, monkeypatch):
    from longrange.commands import train as train_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as when Ctrl-C lands while the corpus is read or the model is built

    monkeypatch.setattr(train_command, "train", interrupted)
    assert main(["train", "--out", str(tmp_path / "r"), "--steps", "1"]) == 130
    assert capsys.readouterr().err.strip() == "longrange train: interrupted"


def test_a_name_that_is_not_utf8_is_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run-\udcff"  # the byte 0xff as Python reads it from a command line
    assert main(["train", "--out", str(out), "--steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "is not valid UTF-8" in err and "argument out" in err
    assert list(tmp_path.iterdir()) == []


def test_an_output_that_cannot_be_written_is_an_error_before_the_evaluation(tmp_path, corpus_dir, capsys, monkeypatch):
    run = _run(tmp_path, corpus_dir)
    calls = []
    monkeypatch.setattr(eval_command, "evaluate", lambda *a, **k: calls.append(1))
    for output, match in (
        (tmp_path / "missing" / "out.json", "does not exist"),
        (tmp_path, "is a directory"),
    ):
        assert main(["eval", str(run), "--output", str(output), "--no-progress"]) == 2
        assert match in capsys.readouterr().err
    assert calls == []


def test_an_output_whose_write_fails_is_an_error_after_the_printed_result(tmp_path, corpus_dir, capsys, monkeypatch):
    run = _run(tmp_path, corpus_dir)
    output = tmp_path / "out.json"
    real_write_text = type(output).write_text

    def full_disk(self, *args, **kwargs):
        if self == output:
            raise OSError(28, "No space left on device")
        return real_write_text(self, *args, **kwargs)

    monkeypatch.setattr(type(output), "write_text", full_disk)
    args = ["eval", str(run), "--split", "train", "--docs", "1", "--no-progress", "--output", str(output)]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert "bits per byte" in captured.out and "error: could not write --output" in captured.err


def test_the_default_output_in_a_run_folder_that_cannot_be_written_stays_a_warning(tmp_path, corpus_dir, capsys):
    run = _run(tmp_path, corpus_dir)
    (run / "eval-train.json").mkdir()  # the default file cannot be written, even by root
    assert main(["eval", str(run), "--split", "train", "--no-progress"]) == 0
    assert "warning: could not write" in capsys.readouterr().err
