"""Library code keeps its host-side work on the CPU, and draws from a generator on that generator's device, whatever
torch's default device is (`torch.set_default_device("cuda")`). These are the bugs the first `make test-gpu` run
found; the meta device stands in for CUDA here, so each test fails on the CPU without its fix"""

import pytest
import torch
from safetensors.torch import load_file

import longrange
from longrange.attention.lsh.hashing import draw_rotations
from longrange.eval.evaluate import evaluate
from longrange.memory.knn_store import KNNMemory
from longrange.tasks.duplication import duplication_batch
from longrange.tasks.transduction import transduction_batch
from longrange.train import TrainConfig, train

pytestmark = pytest.mark.cpu_only  # `--device cuda` already runs everything under another default device


def test_seeded_lsh_rotations_are_the_same_under_another_default_device():
    expected = draw_rotations((8, 2, 3), training=False, seed=5, device="cpu", dtype=torch.float32)
    with torch.device("meta"):
        got = draw_rotations((8, 2, 3), training=False, seed=5, device="cpu", dtype=torch.float32)
    assert torch.equal(got, expected)


def test_task_batches_are_drawn_on_their_generators_device():
    expected = transduction_batch("reverse", 3, 2, 7, 5, torch.Generator().manual_seed(0))
    with torch.device("meta"):
        got = transduction_batch("reverse", 3, 2, 7, 5, torch.Generator().manual_seed(0))
        tokens, targets = duplication_batch(2, 5, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert tokens.device.type == targets.device.type == "cpu"


def test_evaluation_bookkeeping_stays_on_the_cpu(corpus_dir):
    model = longrange.build_model(longrange.ModelConfig.from_name("transformer-tiny"))
    docs = [p.read_bytes() for p in sorted(corpus_dir.iterdir())[:2]]
    expected = evaluate(model, docs, batch_size=2, max_segments=2)
    with torch.device("meta"):  # the model and its inputs stay on the CPU (device="cpu")
        got = evaluate(model, docs, batch_size=2, max_segments=2)
    assert got["bpb"] == expected["bpb"] and got["by_position"] == expected["by_position"]


def test_a_knn_store_is_made_on_the_default_device_and_a_disk_store_on_the_cpu(tmp_path):
    with torch.device("meta"):
        assert KNNMemory(1, 4, 1, 2).keys.device.type == "meta"
        assert KNNMemory(1, 4, 1, 2, storage="disk", directory=tmp_path).keys.device.type == "cpu"


def test_a_run_trains_the_same_under_another_default_device(tmp_path, corpus_dir):
    """The trainer builds its model on the CPU, so the seed fixes the initial weights whatever the default device
    (and a CPU run does not build a model on the default device first)."""
    cfg = TrainConfig(steps=2, batch_size=2, segment_len=16, device="cpu", progress=False, eval_segments=1)
    model_cfg = longrange.ModelConfig.from_name("transformer-xl-tiny")
    train(model_cfg, cfg, str(corpus_dir), tmp_path / "plain")
    with torch.device("meta"):
        train(model_cfg, cfg, str(corpus_dir), tmp_path / "other")
    plain, other = (load_file(str(tmp_path / run / "checkpoint" / "model.safetensors")) for run in ("plain", "other"))
    assert all(torch.equal(plain[key], other[key]) for key in plain)
