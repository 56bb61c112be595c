"""Trainer: loss falls, exact resume (also after SIGKILL), safe checkpoints, accumulation, DDP."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import longrange
from longrange.data import load_corpus
from longrange.model.io import CheckpointError
from longrange.train import TrainConfig, Trainer, train
from longrange.train.checkpoint import read_checkpoint
from longrange.train.config import write_run_config
from tests.conftest import make_documents
from tests.train.systems import cpu_subprocess_env, torchrun_command

ROOT = Path(__file__).resolve().parents[2]


def _cfg(**kw):
    """fp32 explicitly: these tests compare runs with float32 references (auto would pick bf16 for a wider model)."""
    base = dict(batch_size=2, segment_len=16, lr=3e-3, warmup_steps=2, log_every=1, checkpoint_every=4, progress=False)
    return TrainConfig(**{**base, "precision": "fp32", **kw})


def _weights(run: Path) -> dict:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


def test_tiny_model_loss_falls(tmp_path):
    model_cfg = longrange.ModelConfig.from_name("transformer-xl-tiny")
    train(model_cfg, _cfg(steps=40), _docs_dir(tmp_path), tmp_path / "run")
    losses = [r["loss"] for r in _metrics(tmp_path / "run") if "loss" in r]
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def _docs_dir(tmp_path) -> str:
    root = tmp_path / "docs"
    root.mkdir(exist_ok=True)
    for i, doc in enumerate(make_documents(8)):
        (root / f"{i}.txt").write_bytes(doc)
    return str(root)


def _metrics(run: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("preset", ["transformer-tiny", "transformer-xl-tiny"])
def test_resume_equals_one_run(tmp_path, preset):
    data, model_cfg = _docs_dir(tmp_path), longrange.ModelConfig.from_name(preset)
    train(model_cfg, _cfg(steps=8), data, tmp_path / "once")
    half = _cfg(steps=8)
    trainer = _trainer(model_cfg, half, data, tmp_path / "twice")
    while trainer.step < 4:
        trainer.train_step()
    trainer.save()
    write_run_config(tmp_path / "twice", model_cfg, half, data, load_corpus(data).manifest)
    del trainer
    train(model_cfg, half, data, tmp_path / "twice", resume=True)
    once, twice = _weights(tmp_path / "once"), _weights(tmp_path / "twice")
    for key in once:
        assert torch.equal(once[key], twice[key]), key
    loss = {r["step"]: r["loss"] for r in _metrics(tmp_path / "once") if "loss" in r}
    loss2 = {r["step"]: r["loss"] for r in _metrics(tmp_path / "twice") if "loss" in r}
    assert [loss[s] for s in range(5, 9)] == [loss2[s] for s in range(5, 9)]


def _trainer(model_cfg, train_cfg, data, out):
    corpus = load_corpus(data)
    torch.manual_seed(train_cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    return Trainer(longrange.build_model(model_cfg), train_cfg, corpus.split("train"), corpus.split("valid"), out)


def test_sigkill_during_training_resumes_to_the_same_result(tmp_path):
    data = _docs_dir(tmp_path)
    args = [
        "--preset",
        "transformer-xl-tiny",
        "--data",
        data,
        "--steps",
        "150",
        "--batch-size",
        "2",
        "--segment-len",
        "16",
        "--checkpoint-every",
        "5",
        "--warmup-steps",
        "2",
        "--no-progress",
    ]
    cli = [sys.executable, "-m", "longrange.cli", "train"]
    env = cpu_subprocess_env()
    subprocess.run([*cli, *args, "--out", str(tmp_path / "clean")], check=True, env=env, capture_output=True)
    proc = subprocess.Popen([*cli, *args, "--out", str(tmp_path / "killed")], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (tmp_path / "killed" / "checkpoint" / "trainer.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(tmp_path / "killed" / "checkpoint" / "trainer.pt", weights_only=True)
    assert saved["step"] < 150, "the run finished before it was killed; the test proves nothing"
    subprocess.run(
        [*cli, *args, "--out", str(tmp_path / "killed"), "--resume"], check=True, env=env, capture_output=True
    )
    clean, killed = _weights(tmp_path / "clean"), _weights(tmp_path / "killed")
    assert all(torch.equal(clean[k], killed[k]) for k in clean)


def test_truncated_weights_give_a_clear_error(tmp_path):
    run = tmp_path / "run"
    train(longrange.ModelConfig.from_name("transformer-tiny"), _cfg(steps=2), _docs_dir(tmp_path), run)
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        longrange.load(run)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_trainer_state_with_a_pickled_object_is_refused(tmp_path):
    run = tmp_path / "run"
    model_cfg = longrange.ModelConfig.from_name("transformer-tiny")
    train(model_cfg, _cfg(steps=2), _docs_dir(tmp_path), run)
    torch.save({"step": 1, "payload": _Exploit()}, run / "checkpoint" / "trainer.pt")
    with pytest.raises(CheckpointError, match="refusing"):
        read_checkpoint(run / "checkpoint", longrange.build_model(model_cfg))
    assert not Path("pwned.txt").exists()


def test_accumulation_equals_one_bigger_batch():
    """2 micro-batches of 2 rows == one batch of 4 rows over the same four one-segment documents."""
    gen = torch.Generator(torch.get_default_device()).manual_seed(0)
    docs = [bytes(torch.randint(32, 127, (17,), generator=gen).tolist()) for _ in range(8)]  # 16 targets each
    model_cfg = longrange.ModelConfig.from_name("transformer-tiny")

    def grads(batch_size, accumulate):
        torch.manual_seed(0)
        model = longrange.build_model(model_cfg)
        trainer = Trainer(
            model,
            _cfg(batch_size=batch_size, accumulate=accumulate, grad_clip=0, steps=1, lr=1e-3, warmup_steps=0),
            docs,
            None,
            "unused",
        )
        trainer.stream.shuffle = False
        trainer.optimizer.step = lambda: None  # keep the gradients to compare
        trainer.optimizer.zero_grad = lambda set_to_none=True: None
        trainer.train_step()
        return [p.grad.clone() for p in model.parameters()]

    # rows read docs[g::B] unshuffled: 4 rows -> docs 0..3; 2 rows x 2 micro-batches -> (0, 1) then (2, 3)
    for a, b in zip(grads(4, 1), grads(2, 2), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path):
    data = _docs_dir(tmp_path)
    args = [
        "train",
        "--preset",
        "transformer-tiny",
        "--data",
        data,
        "--steps",
        "4",
        "--batch-size",
        "4",
        "--segment-len",
        "16",
        "--no-progress",
        "--seed",
        "1",
        "--grad-clip",
        "0",
    ]
    env = cpu_subprocess_env()
    subprocess.run(
        [sys.executable, "-m", "longrange.cli", *args, "--out", str(tmp_path / "one")],
        check=True,
        env=env,
        capture_output=True,
    )
    torchrun = torchrun_command()
    result = subprocess.run(
        [*torchrun, "-m", "longrange.cli", *args, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=2e-3, atol=2e-4)


def test_the_public_names_stay_where_users_import_them():
    from longrange import train as package
    from longrange.train import config, trainer

    assert package.train is trainer.train and package.Trainer is trainer.Trainer
    assert package.TrainConfig is config.TrainConfig and package.RECIPES is config.RECIPES
    assert set(package.__all__) == {"RECIPES", "TrainConfig", "Trainer", "train"}
