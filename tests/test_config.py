"""Configs: presets, YAML round trip, errors that name the key and the allowed values."""

from pathlib import Path

import pytest

import longrange
from longrange.commands.train import add_arguments, configs_from_args
from longrange.config import PRESETS, ConfigError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    cfg = longrange.ModelConfig.from_name(name)
    if name.endswith("-base"):
        return  # GPU sizes: building them is slow on CI; their config is still validated
    assert longrange.build_model(cfg).num_parameters() > 0


def test_yaml_round_trip(tmp_path):
    cfg = longrange.ModelConfig.from_name("memorizing-tiny", **{"knn.memory_size": 77})
    cfg.to_file(tmp_path / "c.yaml")
    assert longrange.ModelConfig.from_file(tmp_path / "c.yaml") == cfg


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
        longrange.ModelConfig.from_name("transformer-tiny", **bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_yaml_configs_load(path):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    model_cfg, train_cfg, _ = configs_from_args(parser.parse_args(["--config", str(path), "--out", "x"]))
    assert model_cfg.name.endswith("-small") and train_cfg.steps > 0


# --------------------------------------------------------------------------- YAML input: bounded, plain data only


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """`levels` levels of `width` aliases each: width**levels strings once expanded (387M for 9 x 9)."""
    lines = ['a0: &a0 ["lol"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    body = "\n".join("  " + line for line in lines)
    return f"model:\n  preset: transformer-tiny\n  axial_shape: *a{levels - 1}\n  bomb:\n{body}\n"


def test_yaml_alias_bomb_is_refused_in_well_under_a_second(tmp_path):
    import time

    from longrange.config import read_yaml
    from longrange.model.io import load_config
    from longrange.train.config import TrainConfig

    path = tmp_path / "bomb.yaml"
    path.write_text(_alias_bomb())
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.yaml").write_text(_alias_bomb())
    (ckpt / "model.safetensors").write_bytes(b"")
    for read in (read_yaml, longrange.ModelConfig.from_file, TrainConfig.from_file, lambda _: load_config(ckpt)):
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
        longrange.ModelConfig.from_file(path)
    assert "\n" not in str(err.value)
    path.write_text("model:\n  name: " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(ConfigError, match="bytes; a config holds at most"):
        longrange.ModelConfig.from_file(path)
    with pytest.raises(ConfigError, match="bytes; a config holds at most"):
        load_yaml_text("x" * (MAX_CONFIG_BYTES + 1))


def test_yaml_reads_exponent_floats_as_numbers():
    from longrange.config import load_yaml_text

    assert load_yaml_text("lr: 1e-3\nx: 2E+2\nname: e5\n") == {"lr": 1e-3, "x": 200.0, "name": "e5"}


# --------------------------------------------------------------------------- types: every field checked


@pytest.mark.parametrize(
    "bad,match",
    [
        ({"reversible": "abc"}, r"reversible='abc' must be true or false"),
        ({"tie_embeddings": "no"}, r"tie_embeddings='no' must be true or false"),
        ({"tie_embeddings": 1}, r"tie_embeddings=1 must be true or false"),
        ({"dropout": "abc"}, r"dropout='abc' must be a number"),
        ({"dropout": True}, r"dropout=True must be a number"),
        ({"d_ff": "abc"}, r"d_ff='abc' must be an integer or null"),
        ({"d_model": 64.0}, r"d_model=64.0 must be an integer"),
        ({"d_model": True}, r"d_model=True must be an integer"),
        ({"norm_eps": "abc"}, r"norm_eps='abc' must be a number"),
        ({"layers": "xl"}, r"layers='xl' must be a list of strings"),
        ({"layers": ["xl", 3]}, r"layers=\['xl', 3\] must be a list of strings"),
        ({"axial_shape": [8, "x"]}, r"axial_shape=\[8, 'x'\] must be a list of integers or null"),
        ({"name": 5}, r"name=5 must be a string"),
        ({"lsh.n_buckets": "many"}, r"lsh.n_buckets='many' must be an integer or a list of integers or null"),
        ({"lsh.n_buckets": [4, 2.5]}, r"lsh.n_buckets=\[4, 2.5\] must be an integer or a list of integers or null"),
        ({"lsh.dedup": "yes"}, r"lsh.dedup='yes' must be true or false"),
        ({"knn.storage_dir": 3}, r"knn.storage_dir=3 must be a string or null"),
        ({"compressive.loss_weight": "x"}, r"compressive.loss_weight='x' must be a number"),
        ({"luna.activation": "relu"}, r"luna.activation='relu' is not allowed; choose one of \['elu', 'softplus'\]"),
    ],
)
def test_every_field_is_checked_against_its_declared_type(bad, match):
    with pytest.raises(ConfigError, match=match) as err:
        longrange.ModelConfig.from_name("transformer-xl-tiny").replace(**bad)
    assert "\n" not in str(err.value)


def test_types_are_checked_from_yaml_overrides_and_the_constructor():
    from longrange.config import load_yaml_text

    # `--set tie_embeddings="no"` reaches the config as the string "no"; unquoted `no` is YAML's false
    with pytest.raises(ConfigError, match="tie_embeddings='no'"):
        longrange.ModelConfig.from_name("transformer-tiny", tie_embeddings=load_yaml_text('"no"'))
    assert (
        longrange.ModelConfig.from_name("transformer-tiny", tie_embeddings=load_yaml_text("no")).tie_embeddings is False
    )
    with pytest.raises(ConfigError, match="reversible='abc'"):
        longrange.ModelConfig(reversible="abc")
    with pytest.raises(ConfigError, match=r"xl.mem_len='8' must be an integer"):
        longrange.ModelConfig(layers=["xl"], xl={"mem_len": "8"})


def test_good_values_pass_and_ints_become_floats():
    cfg = longrange.ModelConfig.from_name(
        "reformer-tiny", dropout=0, norm_eps=1, axial_shape=(256, 256), **{"lsh.n_buckets": [4, 8]}
    )
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float) and isinstance(cfg.norm_eps, float)
    assert cfg.axial_shape == [256, 256] and cfg.lsh.n_buckets == [4, 8]
    assert longrange.ModelConfig.from_name("reformer-tiny", **{"lsh.n_buckets": None}).lsh.n_buckets is None


def test_a_trainer_like_dataclass_gets_the_same_checks():
    """The trainer's `TrainConfig` uses `check_field_types` / `dataclass_from_dict`; any dataclass does."""
    from dataclasses import dataclass, field
    from typing import Literal

    from longrange.config import check_field_types, dataclass_from_dict

    @dataclass
    class Train:
        steps: int = 10
        lr: float = 1e-3
        bf16: bool = False
        betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
        threads: int | None = None
        optimizer: Literal["adamw", "adam"] = "adamw"

        def __post_init__(self):
            check_field_types(self)

    assert dataclass_from_dict(Train, {"lr": 1, "betas": [1, 0.5]}, prefix="train.") == Train(lr=1.0, betas=[1.0, 0.5])
    for bad, match in [
        ({"steps": "10"}, r"train.steps='10' must be an integer"),
        ({"steps": 1.5}, r"train.steps=1.5 must be an integer"),
        ({"lr": "fast"}, r"train.lr='fast' must be a number"),
        ({"bf16": "true"}, r"train.bf16='true' must be true or false"),
        ({"betas": 0.9}, r"train.betas=0.9 must be a list of numbers"),
        ({"betas": ["a", 1]}, r"train.betas=\['a', 1\] must be a list of numbers"),
        ({"threads": "4"}, r"train.threads='4' must be an integer or null"),
        ({"optimizer": "sgd"}, r"train.optimizer='sgd' is not allowed; choose one of \['adamw', 'adam'\]"),
        ({"stpes": 3}, r"unknown key 'train.stpes'"),
    ]:
        with pytest.raises(ConfigError, match=match):
            dataclass_from_dict(Train, bad, prefix="train.")
    with pytest.raises(ConfigError, match=r"^bf16=1 must be true or false$"):
        Train(bf16=1)


# --------------------------------------------------------------------------- mistakes: misspelt or unused sections


def test_a_misspelt_run_config_section_is_named():
    from longrange.config import check_run_config_sections

    check_run_config_sections({"model": {}, "train": {}, "data": "stdlib"})
    with pytest.raises(ConfigError, match=r"unknown section 'trian' in config file \(did you mean 'train'\?\)"):
        check_run_config_sections({"model": {}, "trian": {"steps": 3}})
    with pytest.raises(ConfigError, match=r"unknown section 'eval' in x.yaml; allowed sections: \['model'\]"):
        check_run_config_sections({"eval": {}}, allowed=("model",), source="x.yaml")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        check_run_config_sections(["model"])


def test_settings_of_a_section_no_layer_uses_warn(caplog):
    cfg = longrange.ModelConfig.from_name("transformer-xl-tiny")
    with caplog.at_level("WARNING", logger="longrange.config"):
        assert cfg.replace(**{"xl.mem_len": 8}).xl.mem_len == 8  # used: no warning
        assert not caplog.records
        assert cfg.replace(**{"lsh.n_hashes": 8}).lsh.n_hashes == 8
    assert len(caplog.records) == 1 and "section 'lsh' is set but no layer uses it" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="longrange.config"):
        longrange.ModelConfig.from_dict({"layers": ["full"], "knn": {"topk": 4}})
        longrange.ModelConfig.from_dict({"layers": ["full"], "knn": {}})  # defaults only: nothing to warn about
        cfg.replace(**{"lsh.n_hashes": 8}).replace(d_model=32)  # warned once, where the section was set
    assert [r.getMessage().split(" is set")[0] for r in caplog.records] == [
        "config section 'knn'",
        "config section 'lsh'",
    ]


def test_a_section_is_read_by_name_also_when_registered_after_the_config_was_made():
    from dataclasses import dataclass

    from longrange.attention import FullAttention, register, unregister

    @dataclass
    class LateConfig:
        width: int = 3

    cfg = longrange.ModelConfig.from_name("transformer-xl-tiny")
    assert cfg.section("xl") is cfg.xl and cfg.xl.mem_len == 64
    register("late", FullAttention, LateConfig)
    try:
        assert cfg.section("late") == LateConfig()  # the defaults, kept from then on
        assert cfg.to_dict() == longrange.ModelConfig.from_name("transformer-xl-tiny").to_dict()
        assert cfg == cfg.replace()
    finally:
        unregister("late")
    with pytest.raises(ConfigError, match="no attention kind 'late' is registered"):
        cfg.section("late")
    assert not hasattr(longrange.ModelConfig, "__getattr__")  # what type checkers see: declared attributes and methods
