"""The CLI: every command listed and documented; bad input is one clear error line."""

import pytest

from longrange.cli import COMMANDS, build_parser, main


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
