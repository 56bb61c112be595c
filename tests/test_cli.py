"""The CLI: every command listed and documented; bad input is one clear error line."""

import importlib.metadata

import pytest

import longrange
from longrange.cli import COMMANDS, build_parser, installed_version, main


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for name in COMMANDS:
        assert name in text


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage" in capsys.readouterr().out


def test_unknown_preset_is_one_clear_error(tmp_path, capsys):
    assert main(["train", "--preset", "no-such-model", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'no-such-model'" in err and "transformer-xl-tiny" in err
    assert "Traceback" not in err


def test_unknown_config_key_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("model:\n  preset: transformer-tiny\n  d_modle: 3\n")
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "r")]) == 2
    assert "d_modle" in capsys.readouterr().err


def test_empty_corpus_is_one_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    args = ["train", "--preset", "transformer-tiny", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]
    assert main(args) == 2
    assert "no text documents" in capsys.readouterr().err


def test_parser_builds():
    assert build_parser().prog == "longrange"


def test_eval_and_generate_commands_on_a_saved_model(tmp_path, corpus_dir, capsys):
    import json

    import longrange

    run = tmp_path / "run"
    longrange.save(longrange.build_model(longrange.ModelConfig.from_name("transformer-xl-tiny", segment_len=16)), run)
    out = tmp_path / "eval.json"
    args = ["eval", str(run), "--data", str(corpus_dir), "--split", "train", "--override", "xl.mem_len=32"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert 6 < result["bpb"] < 10 and result["by_position"]  # untrained: about log2(256) = 8 bits
    assert f"{result['bpb']:.4f} bits per byte" in capsys.readouterr().out
    gen = ["generate", str(run), "--prompt", "def f(", "--max-new-tokens", "8", "--seed", "1", "--top-k", "5"]
    assert main(gen) == 0
    first = capsys.readouterr().out
    assert main(gen) == 0
    assert capsys.readouterr().out == first  # same seed, same text


def test_demo_trains_evaluates_and_samples(tmp_path):
    from longrange.commands.demo import run_demo

    result = run_demo(tmp_path / "demo", preset="transformer-tiny", steps=2, batch_size=2, eval_docs=1)
    assert 0 < result["bpb"] < 10 and result["tokens"] > 0
    assert len(result["sample"]) > 0 and (tmp_path / "demo" / "eval-demo.json").is_file()


def test_version_prints_the_installed_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"longrange {importlib.metadata.version('longrange')}"


def test_version_falls_back_to_the_package_version_without_metadata(monkeypatch):
    # a source tree on sys.path that was never installed has no distribution metadata to read
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    assert installed_version() == longrange.__version__
