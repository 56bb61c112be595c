"""Every system under torchrun (2 processes, gloo) equals one process; per-rank shards resume exactly after
kill -9; another world size is refused; fp16 with a scaler and --compile train."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import longrange
from longrange.model.io import CheckpointError
from longrange.train import train
from tests.train.systems import ROOT, SYSTEMS, cpu_subprocess_env, system_train_config, torchrun_command


def _torchrun(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """2 processes with gloo on the CPU (see `cpu_subprocess_env`)."""
    env = env or cpu_subprocess_env()
    cmd = torchrun_command(2)
    # its own session, so a timeout kills torchrun and its workers together (no orphaned rank keeps waiting)
    proc = subprocess.Popen(
        [*cmd, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"torchrun timed out: {err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _losses(run: Path) -> list[float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


def _weights(run: Path) -> dict:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


@pytest.mark.slow
def test_every_system_on_two_processes_equals_one(tmp_path, corpus_dir):
    """Same global batch (4 rows), 4 updates: loss curves and weights of 2 ranks == 1 process within float error.

    Memorizing starts from an empty memory, so its gate has no gradient in the first step (DDP must not wait
    for it); every stateful system carries its memories per rank.
    """
    result = _torchrun("tests/train/ddp_systems.py", str(corpus_dir), str(tmp_path / "two"), ",".join(SYSTEMS))
    assert result.returncode == 0, result.stderr[-3000:]
    for name, overrides in SYSTEMS.items():
        torch.manual_seed(0)
        model_cfg = longrange.ModelConfig.from_name(f"{name}-tiny").replace(**overrides)
        train(model_cfg, system_train_config(device="cpu"), str(corpus_dir), tmp_path / "one" / name)
        one, two = _losses(tmp_path / "one" / name), _losses(tmp_path / "two" / name)
        assert len(one) == len(two) == 4, name
        torch.testing.assert_close(torch.tensor(two), torch.tensor(one), rtol=1e-4, atol=1e-5, msg=f"{name}: {two}")
        w1, w2 = _weights(tmp_path / "one" / name), _weights(tmp_path / "two" / name)
        for key in w1:
            torch.testing.assert_close(w2[key], w1[key], rtol=2e-3, atol=2e-4, msg=f"{name} {key}")
        shards = sorted(p.name for p in (tmp_path / "two" / name / "checkpoint").glob("trainer*.pt"))
        assert shards == ["trainer-rank1.pt", "trainer.pt"], name


@pytest.mark.slow
def test_kill_9_of_a_two_process_run_resumes_exactly(tmp_path, corpus_dir):
    """SIGKILL rank 0 in the middle of its second checkpoint's swap; torchrun stops the other rank; resuming
    under torchrun gives the same weights and losses as the uninterrupted 2-process run, bit for bit."""
    args = ["-m", "longrange.cli", "train", "--preset", "memorizing-tiny", "--data", str(corpus_dir), "--steps", "6"]
    args += ["--batch-size", "4", "--segment-len", "16", "--checkpoint-every", "2", "--no-progress", "--log-every", "1"]
    args += ["--set", "knn.memory_size=64", "knn.topk=4"]
    clean = _torchrun(*args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr[-3000:]
    fault = cpu_subprocess_env(LONGRANGE_FAULT_AT="checkpoint-swap:2")
    killed = _torchrun(*args, "--out", str(tmp_path / "cut"), env=fault)
    assert killed.returncode != 0
    assert not (tmp_path / "cut" / "checkpoint").exists()  # killed between moving the old one away and the new in
    resumed = _torchrun("-m", "longrange.cli", "train", "--out", str(tmp_path / "cut"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "clean"), _weights(tmp_path / "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(tmp_path / "clean") == _losses(tmp_path / "cut")
    # another world size is refused with what to do
    with pytest.raises(CheckpointError, match="written by 2 process.*--nproc_per_node 2"):
        model_cfg = longrange.ModelConfig.from_file(tmp_path / "cut" / "config.yaml")
        train(model_cfg, system_train_config(steps=8, device="cpu"), str(corpus_dir), tmp_path / "cut", resume=True)


def test_memorizing_trains_in_fp16_with_a_gradient_scaler(tmp_path, corpus_dir):
    model_cfg = longrange.ModelConfig.from_name("memorizing-tiny").replace(**SYSTEMS["memorizing"])
    train(model_cfg, system_train_config(steps=20, precision="fp16", lr=3e-3), str(corpus_dir), tmp_path / "fp16")
    losses = _losses(tmp_path / "fp16")
    assert len(losses) == 20 and all(map(lambda x: x is not None and x == x, losses))
    saved = torch.load(tmp_path / "fp16" / "checkpoint" / "trainer.pt", weights_only=True)
    assert saved["scaler"]["scale"] > 0  # the scaler's state is resumed too


@pytest.mark.slow
def test_compile_trains_a_transformer(tmp_path, corpus_dir):
    try:
        torch.compile(torch.nn.Linear(2, 2))(torch.zeros(1, 2))
    except Exception as err:  # noqa: BLE001 -- a platform without a working compiler toolchain
        pytest.skip(f"torch.compile does not run on this platform: {err}")
    model_cfg = longrange.ModelConfig.from_name("transformer-tiny")
    train(model_cfg, system_train_config(steps=3, compile=True), str(corpus_dir), tmp_path / "compiled")
    torch.manual_seed(0)
    train(model_cfg, system_train_config(steps=3), str(corpus_dir), tmp_path / "eager")
    torch.testing.assert_close(
        torch.tensor(_losses(tmp_path / "compiled")), torch.tensor(_losses(tmp_path / "eager")), rtol=1e-4, atol=1e-4
    )


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["transformer-tiny", "transformer-xl-tiny"])
def test_fsdp_on_two_processes_equals_one_and_resumes(tmp_path, corpus_dir, preset):
    """FSDP2 (`--shard fsdp`): parameters and optimiser state split over 2 ranks; losses, held-out checks and the
    gathered checkpoint equal one process's; the run resumes from its full checkpoint under torchrun."""
    args = ["-m", "longrange.cli", "train", "--preset", preset, "--data", str(corpus_dir), "--batch-size", "4"]
    args += ["--segment-len", "16", "--no-progress", "--seed", "1", "--log-every", "1", "--checkpoint-every", "2"]
    args += ["--eval-every", "2", "--eval-segments", "1", "--lr", "1e-2", "--min-lr", "1e-2", "--warmup-steps", "0"]
    # a constant learning rate, so a 2-step run extended to 4 on resume has the schedule of a 4-step run
    one = subprocess.run(
        [sys.executable, *args, "--steps", "4", "--out", str(tmp_path / "one")], env=cpu_subprocess_env(), cwd=ROOT
    )
    assert one.returncode == 0
    two = _torchrun(*args, "--steps", "2", "--shard", "fsdp", "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    (tmp_path / "two" / "train.yaml").write_text(
        (tmp_path / "two" / "train.yaml").read_text().replace("steps: 2", "steps: 4")
    )
    resumed = _torchrun("-m", "longrange.cli", "train", "--out", str(tmp_path / "two"), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    torch.testing.assert_close(torch.tensor(_losses(tmp_path / "two")), torch.tensor(_losses(tmp_path / "one")))
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=2e-3, atol=2e-4, msg=key)
    assert longrange.load(tmp_path / "two") is not None  # one full safetensors file, like any other run
