"""Library code keeps its host-side work on the CPU, and draws from a generator on that generator's device, whatever
torch's default device is (`torch.set_default_device("cuda")`). These are the bugs the first `make test-gpu` run
found; the meta device stands in for CUDA here, so each test fails on the CPU without its fix."""

import torch

import longrange as lr
from longrange.attention.lsh.hashing import draw_rotations
from longrange.eval.evaluate import evaluate
from longrange.memory.knn_store import KNNMemory
from longrange.tasks.duplication import duplication_batch
from longrange.tasks.transduction import transduction_batch


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
    model = lr.build_model(lr.ModelConfig.from_name("transformer-tiny"))
    docs = [p.read_bytes() for p in sorted(corpus_dir.iterdir())[:2]]
    expected = evaluate(model, docs, batch_size=2, max_segments=2)
    with torch.device("meta"):  # the model and its inputs stay on the CPU (device="cpu")
        got = evaluate(model, docs, batch_size=2, max_segments=2)
    assert got["bpb"] == expected["bpb"] and got["by_position"] == expected["by_position"]


def test_a_knn_store_is_made_on_the_default_device_and_a_disk_store_on_the_cpu(tmp_path):
    with torch.device("meta"):
        assert KNNMemory(1, 4, 1, 2).keys.device.type == "meta"
        assert KNNMemory(1, 4, 1, 2, storage="disk", directory=tmp_path).keys.device.type == "cpu"
