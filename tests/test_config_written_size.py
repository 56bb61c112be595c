"""A config is never written larger than reading it back allows (the 1 MiB cap): a config just under the cap that
would grow when written is kept as it is where it can be (UTF-8 text, not escapes), else refused before a run
folder is touched."""

import pytest

import longrange
from longrange.cli import main
from longrange.config import MAX_CONFIG_BYTES, ConfigError, ModelConfig


def _config_file(path, storage_dir: str):
    path.write_text(f"model:\n  preset: memorizing-tiny\n  knn:\n    storage_dir: '{storage_dir}'\n", encoding="utf-8")
    assert path.stat().st_size < MAX_CONFIG_BYTES
    return path


def test_text_that_is_not_ascii_is_written_as_read(tmp_path):
    source = _config_file(tmp_path / "in.yaml", "é" * 500_000)  # 1,000,000 bytes of UTF-8
    cfg = ModelConfig.from_file(source)
    cfg.to_file(tmp_path / "out.yaml")  # escaped (\xE9) it would be twice the size, over the cap
    assert (tmp_path / "out.yaml").stat().st_size < MAX_CONFIG_BYTES
    assert ModelConfig.from_file(tmp_path / "out.yaml") == cfg


def test_a_config_that_would_grow_over_the_cap_is_refused_before_the_run_starts(tmp_path, corpus_dir, capsys):
    source = _config_file(tmp_path / "in.yaml", "ab " * 333_000)  # written, long lines are folded and indented
    cfg = ModelConfig.from_file(source)
    with pytest.raises(ConfigError, match="the model config would be .* bytes written, over the 1,048,576"):
        cfg.to_file(tmp_path / "out.yaml")
    with pytest.raises(ConfigError, match="over the 1,048,576"):
        longrange.save(longrange.build_model(cfg), tmp_path / "saved")
    out = tmp_path / "run"
    args = ["train", "--config", str(source), "--data", str(corpus_dir), "--out", str(out), "--steps", "1"]
    assert main([*args, "--batch-size", "2", "--segment-len", "16", "--no-progress"]) == 2
    assert "would be" in capsys.readouterr().err
    assert not out.exists()  # refused before the run folder was made
