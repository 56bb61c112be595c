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


# --------------------------------------------------------------------------- YAML input (issue 14, item 12)


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """`levels` levels of `width` aliases each: width**levels strings once expanded (387M for 9 x 9)."""
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    body = "\n".join("  " + line for line in lines)
    return f"model:\n  preset: transformer-tiny\n  axial_shape: *a{levels - 1}\n  bomb:\n{body}\n"


def test_yaml_alias_bomb_is_refused_in_well_under_a_second(tmp_path):
    import time

    from longrange.config import _read_yaml
    from longrange.model.io import load_config
    from longrange.train.trainer import TrainConfig

    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text(_alias_bomb())
    (ckpt / "model.safetensors").write_bytes(b"")
    for read in (_read_yaml, lr.ModelConfig.from_file, TrainConfig.from_file, lambda _: load_config(ckpt)):
        start = time.perf_counter()
        with pytest.raises(ConfigError, match=r"anchors and aliases \(&, \*\) are not allowed") as err:
            read(path)
        assert time.perf_counter() - start < 1.0
        assert "\n" not in str(err.value)


def test_yaml_single_anchor_python_tag_and_oversized_file_give_one_line(tmp_path):
    from longrange.config import MAX_CONFIG_BYTES, load_yaml_text

    with pytest.raises(ConfigError, match="anchors and aliases"):
        load_yaml_text("model: &m {d_model: 64}\n")
    path = tmp_path / "tag.yaml"
    path.write_text('model: !!python/object/apply:os.system ["echo owned"]\n')
    with pytest.raises(ConfigError, match="tag.yaml' is not a valid config: could not determine a constructor") as err:
        lr.ModelConfig.from_file(path)
    assert "\n" not in str(err.value)
    path.write_text("model:\n  name: " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="bytes; a config holds at most"):
        lr.ModelConfig.from_file(path)
    with pytest.raises(ConfigError, match="bytes; a config holds at most"):
        load_yaml_text("x" * (MAX_CONFIG_BYTES + 1))


def test_yaml_reads_exponent_floats_as_numbers():
    from longrange.config import load_yaml_text

    assert load_yaml_text("lr: 1e-3\nx: 2E+2\nname: e5\n") == {"lr": 1e-3, "x": 200.0, "name": "e5"}
