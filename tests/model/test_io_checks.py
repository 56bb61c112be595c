"""Loading refuses a config that does not fit its weights before allocating, and non-finite weights."""

import time

import pytest
import torch
import yaml

import longrange
from longrange.model.io import CheckpointError, load, read_shapes


def _saved(tmp_path, name="transformer-tiny"):
    model = longrange.build_model(longrange.ModelConfig.from_name(name))
    return model, longrange.save(model, tmp_path / "ckpt")


def test_header_shapes_are_read_without_loading(tmp_path):
    model, path = _saved(tmp_path)
    assert read_shapes(path) == {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_huge_vocab_in_config_is_refused_before_allocation(tmp_path):
    """Refused from the header before any allocation (1e8 would be 25 GB; 4e6, 1 GB, keeps a regression survivable)."""
    _, path = _saved(tmp_path)
    cfg = yaml.safe_load((path / "config.yaml").read_text())
    cfg["vocab_size"] = 4_000_000
    (path / "config.yaml").write_text(yaml.safe_dump(cfg))
    load(_saved(tmp_path / "warm")[1])  # first-use costs of the meta device are not what is measured
    start = time.perf_counter()
    with pytest.raises(CheckpointError, match=r"do not fit config.yaml.*embed.weight.*4000000"):
        load(path)
    assert time.perf_counter() - start < 0.5


def test_nan_weights_are_refused_at_load(tmp_path):
    model, _ = _saved(tmp_path)
    with torch.no_grad():
        model.blocks[0].ff.up.weight.fill_(float("nan"))
    longrange.save(model, tmp_path / "nan")
    with pytest.raises(CheckpointError, match=r"NaN or infinite.*blocks\.0\.ff\.up\.weight.*diverged"):
        load(tmp_path / "nan")
    assert torch.isnan(load(tmp_path / "nan", allow_nonfinite=True).blocks[0].ff.up.weight).all()
