"""Fault injection: kill -9 at random points of 10 short runs (5 of them inside a checkpoint write), resume
each, and compare with an uninterrupted run bit for bit (weights and every logged loss)."""

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.systems import cpu_subprocess_env

ARGS = ["--preset", "transformer-xl-tiny", "--steps", "10", "--batch-size", "2", "--segment-len", "16"]
ARGS += ["--checkpoint-every", "2", "--warmup-steps", "2", "--no-progress", "--log-every", "1", "--device", "cpu"]
# rank 0's points inside `write_checkpoint`: after the weights, after every shard, between the two renames
CHECKPOINT_POINTS = [
    "checkpoint-weights:2",
    "checkpoint-shards:3",
    "checkpoint-swap:2",
    "checkpoint-swap:4",
    "checkpoint-weights:5",
]


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "longrange.cli", "train", *ARGS, "--out", str(out), *extra]


def _losses(run: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def _weights(run: Path) -> dict:
    return load_file(str(run / "checkpoint" / "model.safetensors"))


@pytest.mark.slow
def test_kill_9_at_random_points_then_resume_equals_an_uninterrupted_run(tmp_path, corpus_dir):
    env = cpu_subprocess_env()
    data = ["--data", str(corpus_dir)]
    subprocess.run(_cli(tmp_path / "clean", *data), check=True, env=env, capture_output=True)
    clean_weights, clean_losses = _weights(tmp_path / "clean"), _losses(tmp_path / "clean")
    rng = random.Random(0)
    for i in range(10):
        run = tmp_path / f"cut{i}"
        if i < len(CHECKPOINT_POINTS):  # inside a checkpoint write
            point = CHECKPOINT_POINTS[i]
            proc = subprocess.run(_cli(run, *data), env={**env, "LONGRANGE_FAULT_AT": point}, capture_output=True)
            assert proc.returncode == -signal.SIGKILL, (point, proc.stderr[-500:])
        else:  # at a random moment after the first checkpoint
            proc = subprocess.Popen(_cli(run, *data), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 60
            while not list(run.glob("checkpoint*/trainer.pt")) and time.time() < deadline:
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.4))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        resumed = subprocess.run(
            [sys.executable, "-m", "longrange.cli", "train", "--out", str(run), "--resume"],
            env=env,
            capture_output=True,
        )
        assert resumed.returncode == 0, (i, resumed.stderr[-1000:])
        weights = _weights(run)
        assert all(torch.equal(clean_weights[k], weights[k]) for k in clean_weights), i
        assert _losses(run) == clean_losses, i
