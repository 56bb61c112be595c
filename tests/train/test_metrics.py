"""Metric sinks: metrics.jsonl (strict JSON), TensorBoard when installed, W&B on request; one list, built once."""

import json
import sys
import types

import pytest

import longrange
from longrange.train import TrainConfig, train
from longrange.train.metrics import JsonlSink, TensorBoardSink, WandbSink, metric_sinks


def test_the_sinks_follow_the_config(monkeypatch, tmp_path):
    kinds = [type(sink) for sink in metric_sinks(TrainConfig(), tmp_path)]
    assert kinds == [JsonlSink, TensorBoardSink]
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: object()))
    assert [type(sink) for sink in metric_sinks(TrainConfig(wandb="proj"), tmp_path)] == [
        JsonlSink,
        WandbSink,
        TensorBoardSink,
    ]


def test_a_jsonl_line_is_strict_json(tmp_path):
    sink = JsonlSink(tmp_path / "metrics.jsonl")
    sink.log({"step": 1, "loss": float("nan"), "lr": 1e-3, "grad_norm": float("inf")})
    sink.log({"step": 2, "valid_bpb": 1.5})
    sink.close()
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"step": 1, "loss": None, "lr": 1e-3, "grad_norm": None},  # NaN and inf are not JSON: null
        {"step": 2, "valid_bpb": 1.5},
    ]


def test_tensorboard_without_the_package_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    sink = TensorBoardSink(tmp_path / "tensorboard")
    sink.log({"step": 1, "loss": 2.5})
    sink.close()
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_gets_every_number_at_its_step(monkeypatch, tmp_path):
    scalars, closed = [], []

    class Writer:
        def __init__(self, log_dir):
            assert log_dir == str(tmp_path / "tensorboard")

        def add_scalar(self, key, value, step):
            scalars.append((key, value, step))

        def close(self):
            closed.append(True)

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    sink = TensorBoardSink(tmp_path / "tensorboard")
    sink.log({"step": 3, "loss": 2.5, "note": "text", "skipped": 0})
    sink.close()
    assert scalars == [("loss", 2.5, 3), ("skipped", 0, 3)] and closed == [True]


def test_wandb_without_the_package_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ValueError, match="needs the `wandb` package"):
        WandbSink("proj", tmp_path)


def test_records_go_to_the_wandb_run(monkeypatch, tmp_path):
    sent, inits, finished = [], [], []

    class Run:
        def log(self, data, step):
            sent.append((step, data))

        def finish(self):
            finished.append(True)

    fake = types.SimpleNamespace(init=lambda **kw: inits.append(kw) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sink = WandbSink("proj", tmp_path / "run-a", {"lr": 1e-3})
    sink.log({"step": 10, "loss": 2.5, "lr": 1e-3, "note": "text", "grad_norm": float("nan")})
    sink.close()
    assert inits[0]["project"] == "proj" and inits[0]["name"] == "run-a" and inits[0]["config"] == {"lr": 1e-3}
    assert sent == [(10, {"loss": 2.5, "lr": 1e-3})]  # strings and non-finite values are left out
    assert finished == [True]


def test_the_trainer_sends_its_metrics_with_wandb_set_and_closes_the_run(monkeypatch, tmp_path, corpus_dir):
    sent, finished = [], []
    run = types.SimpleNamespace(log=lambda data, step: sent.append(step), finish=lambda: finished.append(True))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: run))
    cfg = TrainConfig(steps=2, batch_size=2, segment_len=16, log_every=1, progress=False, wandb="proj")
    train(longrange.ModelConfig.from_name("transformer-tiny"), cfg, str(corpus_dir), tmp_path / "run")
    assert sent[:2] == [1, 2] and finished == [True]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
