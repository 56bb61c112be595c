"""The optional W&B logger: off without a project, a clear error without the package, numbers sent per step."""

import sys
import types

import pytest

from longrange.train.loggers import wandb_logger


def test_no_project_no_logger_and_missing_package_is_one_clear_line(monkeypatch, tmp_path):
    assert wandb_logger(None, tmp_path) is None
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ValueError, match="needs the `wandb` package"):
        wandb_logger("proj", tmp_path)


def test_records_go_to_the_wandb_run(monkeypatch, tmp_path):
    sent, inits = [], []

    class Run:
        def log(self, data, step):
            sent.append((step, data))

    fake = types.SimpleNamespace(init=lambda **kw: inits.append(kw) or Run())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    log = wandb_logger("proj", tmp_path / "run-a", {"lr": 1e-3})
    log({"step": 10, "loss": 2.5, "lr": 1e-3, "note": "text", "grad_norm": float("nan")})
    assert inits[0]["project"] == "proj" and inits[0]["name"] == "run-a" and inits[0]["config"] == {"lr": 1e-3}
    assert sent == [(10, {"loss": 2.5, "lr": 1e-3})]  # strings and non-finite values are left out


def test_the_trainer_sends_its_metrics_with_wandb_set(monkeypatch, tmp_path, corpus_dir):
    import longrange
    from longrange.train import TrainConfig, train

    sent = []
    run = types.SimpleNamespace(log=lambda data, step: sent.append(step))
    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: run))
    cfg = TrainConfig(steps=2, batch_size=2, segment_len=16, log_every=1, progress=False, wandb="proj")
    train(longrange.ModelConfig.from_name("transformer-tiny"), cfg, str(corpus_dir), tmp_path / "run")
    assert sent[:2] == [1, 2]
