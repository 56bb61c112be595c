"""Configs: presets, YAML round trip, errors that name the key and the allowed values."""

from pathlib import Path

import pytest

import longrange as lr
from longrange.commands.train import add_arguments, configs_from_args
from longrange.config import PRESETS, ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    cfg = lr.ModelConfig.from_name(name)
    if name.endswith("-base"):
        return  # GPU sizes: building them is slow on CI; their config is still validated
    assert lr.build_model(cfg).num_parameters() > 0


def test_yaml_round_trip(tmp_path):
    cfg = lr.ModelConfig.from_name("memorizing-tiny", **{"knn.memory_size": 77})
    cfg.to_file(tmp_path / "c.yaml")
    assert lr.ModelConfig.from_file(tmp_path / "c.yaml") == cfg


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"positions": "spiral"}, "positions='spiral' is not allowed; choose one of"),
        ({"layers": ["full", "magic"]}, r"layers\[1\]='magic'"),
        ({"knn.backend": "gpu"}, "knn.backend='gpu'"),
        ({"d_model": 30, "n_heads": 4}, "divisible"),
        ({"lsh.bucket": 3}, "unknown key 'lsh.bucket'|unknown key 'bucket'"),
    ],
)
def test_bad_values_name_the_key_and_choices(bad, match):
    with pytest.raises(ConfigError, match=match):
        lr.ModelConfig.from_name("transformer-tiny", **bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_yaml_configs_load(path):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    model_cfg, train_cfg, _ = configs_from_args(parser.parse_args(["--config", str(path), "--out", "x"]))
    assert model_cfg.name.endswith("-small") and train_cfg.steps > 0
