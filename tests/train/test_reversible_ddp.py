"""Reversible layers under DistributedDataParallel (a known failure of public Reformer ports).

The reversible stack computes parameter gradients inside its own backward pass (ordinary autograd
calls on recomputed blocks), so DDP's gradient hooks must still fire once per parameter and the
all-reduced gradients must equal one process's gradients on the same global batch. Dropout is 0
and every rank seeds the same RNG, so the fresh LSH rotations drawn in training agree too.
"""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import longrange
from tests.conftest import make_documents
from tests.train.systems import cpu_subprocess_env, torchrun_command


@pytest.mark.slow
def test_torchrun_two_processes_train_a_reversible_reformer_like_one(tmp_path):
    data = tmp_path / "docs"
    data.mkdir()
    for i, doc in enumerate(make_documents(8)):
        (data / f"{i}.txt").write_bytes(doc)
    args = ["train", "--preset", "reformer-tiny", "--data", str(data), "--steps", "2", "--batch-size", "4"]
    args += ["--segment-len", "32", "--no-progress", "--seed", "1", "--grad-clip", "0", "--lr", "1e-2"]
    args += ["--warmup-steps", "0", "--eval-segments", "1"]
    args += ["--set", "lsh.n_buckets=4", "lsh.bucket_size=8", "local.chunk_len=8"]
    env = cpu_subprocess_env()
    one = subprocess.run(
        [sys.executable, "-m", "longrange.cli", *args, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = torchrun_command()
    two = subprocess.run(
        [*torchrun, "-m", "longrange.cli", *args, "--out", str(tmp_path / "two")],
        env=env,
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    a = load_file(str(tmp_path / "one" / "checkpoint" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "checkpoint" / "model.safetensors"))
    torch.manual_seed(1)  # the trainer's seed before it builds the model: the initial weights
    with torch.device("cpu"):  # as the trainer builds it
        initial = longrange.build_model(longrange.ModelConfig.from_file(tmp_path / "one" / "config.yaml")).state_dict()
    assert a.keys() == b.keys()
    moved = max(float((a[key] - initial[key]).abs().max()) for key in a if key.startswith("blocks."))
    assert moved > 1e-3  # the blocks really trained, far beyond the tolerance below
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=2e-3, atol=2e-4)
