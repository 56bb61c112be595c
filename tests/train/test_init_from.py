"""`--init-from` says how much the load changed what the model computes (`longrange.train.init_from`)."""

from __future__ import annotations

import json

import torch

from longrange.config import ModelConfig
from longrange.data.corpus import load_corpus
from longrange.model.build import build_model
from longrange.model.io import save
from longrange.train import TrainConfig, train
from longrange.train.init_from import init_weights


def _saved(cfg: ModelConfig, path):
    torch.manual_seed(0)
    model = build_model(cfg)
    save(model, path)
    return model


def test_same_layout_loads_the_same_function_and_a_swapped_layer_is_measured(tmp_path):
    docs = load_corpus(None).split("valid")[:2]
    xl = ModelConfig.from_name("transformer-xl-tiny")
    _saved(xl, tmp_path / "xl")
    torch.manual_seed(1)
    same = build_model(xl)
    report = init_weights(same, tmp_path / "xl", docs)
    assert report["fresh"] == [] and report["skipped"] == []
    assert report["loaded_bpb"] == report["source_bpb"] and report["bytes"] > 0

    memorizing = ModelConfig.from_name("memorizing-tiny")  # its kNN layer replaces an XL layer
    swapped = build_model(memorizing)
    report = init_weights(swapped, tmp_path / "xl", docs)
    assert report["fresh"] and report["skipped"]  # the T5 bias and gate are fresh, XL's position tensors skipped
    assert abs(report["loaded_bpb"] - report["source_bpb"]) > 1e-3


def test_train_records_the_comparison_in_the_run(tmp_path):
    source = _saved(ModelConfig.from_name("transformer-tiny"), tmp_path / "source")
    assert source is not None
    cfg = TrainConfig(steps=1, batch_size=2, checkpoint_every=1, progress=False, precision="fp32", device="cpu")
    out = train(ModelConfig.from_name("transformer-tiny"), cfg, None, tmp_path / "run", init_from=tmp_path / "source")
    record = json.loads((out / "init-from.json").read_text())
    assert record["loaded_bpb"] == record["source_bpb"] and record["loaded"] > 0
