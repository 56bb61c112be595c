"""A bf16 kNN memory: a run under bf16 autocast keeps bf16 keys and values, its exact search agrees with a float32
exact search, its state saves, loads and resumes as bf16; a float32 run's store is unchanged.

Keys and queries of the agreement tests come from a memorizing model (d 128, 2 heads of width 64, kNN layer on
top of an XL layer) trained for 50 updates of 4 x 128 bytes on 60 modules of the Python standard library (read
from this machine) and then run under bf16 autocast over 25,600 bytes of the modules after them: the
L2-normalised keys its kNN layer stores, and the normalised queries it searches with, in bf16 as a bf16 run makes
them. Their scores crowd: a query's k-th best score shares its bf16 value with dozens of slots, so a top 32 taken
on the bf16 products agrees with the float32 one on about half of its slots (checked below: the keys are a real
test). Without the search's offset (`_score_offsets`) the bf16 search's agreement here fell to 0.62-0.72.
"""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import longrange
from longrange.data.stream import DocumentStream
from longrange.memory.knn_store import KNNMemory

pytestmark = pytest.mark.cpu_only  # a trained model's keys, made on the CPU

SEGMENT, HEADS, WIDTH = 128, 2, 64
STORED = 24576  # > 16 x 64 groups of 16 slots: the grouped search, one (row, head) at a time
UPDATES = 50


@pytest.fixture(scope="module")
def keys_and_queries() -> tuple[torch.Tensor, torch.Tensor]:
    """keys (1, H, STORED, E) and queries (1, H, 512, E), bf16 values held in float32 (see the docstring)."""
    torch.manual_seed(0)
    overrides = {"xl.mem_len": SEGMENT, "knn.mem_len": SEGMENT, "knn.memory_size": 1024, "knn.topk": 32}
    cfg = longrange.ModelConfig.from_name(
        "memorizing-tiny", d_model=HEADS * WIDTH, n_heads=HEADS, segment_len=SEGMENT, **overrides
    )
    model = longrange.build_model(cfg)
    sources = sorted(Path(os.__file__).parent.glob("*.py"))  # the standard library's own modules, on this machine
    documents, held_out = [f.read_bytes() for f in sources[:60]], b"".join(f.read_bytes() for f in sources[60:])
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    state = model.init_state(4)
    for _, batch in zip(range(UPDATES), DocumentStream(documents, 4, SEGMENT, seed=0), strict=False):
        out = model(batch.tokens, state=state, doc_start=batch.doc_start, targets=batch.targets)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        state = out.state.detach()
    model.eval()
    layer = next(i for i, kind in enumerate(cfg.layers) if kind == "knn")
    text = held_out[: STORED + 8 * SEGMENT]  # modules it did not train on
    tokens = torch.tensor(list(text)).view(1, -1)
    state = model.init_state(1)
    store = state.layers[layer].store  # the model's own memory (1,024 entries); what enters it is recorded
    keys, queries, add, search = [], [], store.add, store.search
    store.add = lambda k, v, *args, **kw: (keys.append(k.float()), add(k, v, *args, **kw))[1]
    store.search = lambda q, k: (queries.append(q.float()), search(q, k))[1]
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        for start in range(0, tokens.shape[1], SEGMENT):
            state = model(tokens[:, start : start + SEGMENT], state=state).state
    assert keys[0].dtype == torch.float32 and store.keys.dtype == torch.bfloat16  # bf16 entries, held exactly
    return torch.cat(keys, dim=2)[:, :, :STORED], torch.cat(queries[-4:], dim=2)


def _agreement(keys: torch.Tensor, queries: torch.Tensor, slots: torch.Tensor, k: int) -> tuple[float, float]:
    """(top-k overlap with the float32 exact top k, share of the slots found whose float32 score reaches the
    float32 k-th best: 1 when the slots found are a float32 top k, ties included)."""
    every = queries @ keys.transpose(-1, -2)  # float32 scores (1, H, Q, M)
    truth = every.topk(k, dim=-1)
    overlap = (truth.indices[..., :, None] == slots[..., None, :]).any(-1).float().mean().item()
    reached = (every.gather(-1, slots) >= truth.values[..., -1:]).float().mean().item()
    return overlap, reached


@pytest.mark.parametrize(("k", "chunk"), [(32, 65536), (32, 1024), (4, 65536)])
def test_bf16_search_agrees_with_the_float32_search_on_a_trained_models_keys(keys_and_queries, k, chunk):
    keys, queries = keys_and_queries
    low = KNNMemory(1, STORED, HEADS, WIDTH, search_chunk=chunk, dtype=torch.bfloat16)
    low.add(keys, keys)
    scores, slots = low.search_slots(queries.bfloat16(), k)
    overlap, reached = _agreement(keys, queries, slots, k)
    assert overlap >= 0.99 and reached >= 0.999, (overlap, reached)
    # the scores returned are float32 scores of the slots found (rescored), not bf16-rounded ones
    assert scores.dtype == torch.float32
    float32 = (queries @ keys.transpose(-1, -2)).gather(-1, slots)
    torch.testing.assert_close(scores, float32, rtol=0, atol=1e-5)


def test_the_crowded_keys_defeat_a_plain_bf16_top_k(keys_and_queries):
    """What the offset and the rescoring are for: a top-k of the bf16 products themselves misses many slots."""
    keys, queries = keys_and_queries
    plain = (queries.bfloat16() @ keys.bfloat16().transpose(-1, -2)).topk(32, dim=-1).indices
    overlap, _ = _agreement(keys, queries, plain, 32)
    assert overlap < 0.97, overlap


def test_small_bf16_memories_are_scored_in_float32_outright():
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(2, 3, 500, 16, generator=g), dim=-1).bfloat16().float()
    queries = F.normalize(torch.randn(2, 3, 40, 16, generator=g), dim=-1)
    exact, low = KNNMemory(2, 500, 3, 16), KNNMemory(2, 500, 3, 16, dtype=torch.bfloat16)
    exact.add(keys, keys)
    low.add(keys, keys)
    assert torch.equal(exact.search_slots(queries, 8)[1], low.search_slots(queries, 8)[1])


def test_an_empty_store_adopts_bf16_entries_and_only_then():
    keys = F.normalize(torch.randn(1, 2, 6, 8), dim=-1)
    adopting = KNNMemory(1, 16, 2, 8, adopt_bf16=True)
    adopting.add(keys.bfloat16(), keys.bfloat16())  # a bf16 run's first entries
    assert adopting.dtype == adopting.keys.dtype == adopting.values.dtype == torch.bfloat16
    assert torch.equal(adopting.keys[:, :, :6], keys.bfloat16())
    written = KNNMemory(1, 16, 2, 8, adopt_bf16=True)
    written.add(keys, keys)  # float32 entries: stays float32, and once written it keeps its dtype
    written.add(keys.bfloat16(), keys.bfloat16())
    assert written.dtype == written.keys.dtype == torch.float32
    fixed = KNNMemory(1, 16, 2, 8)  # adopt_bf16 off (the default): converts, as before
    fixed.add(keys.bfloat16(), keys.bfloat16())
    assert fixed.keys.dtype == torch.float32
    faiss = KNNMemory(1, 16, 2, 8, backend="faiss-flat", adopt_bf16=True)  # faiss holds float32 only
    assert not faiss.adopt_bf16


def test_a_disk_store_adopts_bf16_in_new_files(tmp_path):
    store = KNNMemory(1, 16, 2, 8, storage="disk", directory=tmp_path, adopt_bf16=True)
    keys = F.normalize(torch.randn(1, 2, 5, 8), dim=-1).bfloat16()
    store.add(keys, keys)
    assert store.keys.dtype == torch.bfloat16 and torch.equal(store.keys[:, :, :5], keys)
    assert sorted(p.name for p in store.directory.iterdir()) == ["keys.bf16", "values.bf16"]


def test_a_bf16_store_saves_and_loads_as_bf16(tmp_path):
    g = torch.Generator().manual_seed(1)
    keys = F.normalize(torch.randn(2, 2, 3000, 16, generator=g), dim=-1).bfloat16()
    store = KNNMemory(2, 4096, 2, 16, adopt_bf16=True)
    store.add(keys, keys * 2)
    store.reset(torch.tensor([False, True]))  # a reset row: the loaded store must mask it too
    store.save(tmp_path / "knn.safetensors")
    queries = F.normalize(torch.randn(2, 2, 50, 16, generator=g), dim=-1)
    loaded = KNNMemory(2, 4096, 2, 16, adopt_bf16=True)  # as a resumed run makes it: empty, adopting
    loaded.load(tmp_path / "knn.safetensors")
    assert loaded.keys.dtype == loaded.values.dtype == torch.bfloat16
    for name in ("keys", "values", "position", "real", "added", "live_from"):
        assert torch.equal(getattr(loaded, name), getattr(store, name)), name
    for a, b in zip(loaded.search(queries, 8), store.search(queries, 8), strict=True):
        assert torch.equal(a, b)
    converted = KNNMemory(2, 4096, 2, 16)  # a float32 store converts what it loads
    converted.load(tmp_path / "knn.safetensors")
    assert converted.keys.dtype == torch.float32 and torch.equal(converted.keys, store.keys.float())


def test_a_memorizing_model_keeps_its_memory_in_the_runs_precision():
    model = longrange.build_model(longrange.ModelConfig.from_name("memorizing-tiny"))
    tokens = torch.randint(0, 256, (2, 16))
    for dtype in (torch.bfloat16, torch.float32):
        state = model.init_state(2)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            for _ in range(2):
                state = model(tokens, state=state).state
        (store,) = [layer.store for layer in state.layers if layer is not None and layer.store is not None]
        assert store.keys.dtype == dtype and store.values.dtype == dtype


class _Stop(Exception):
    pass


def test_a_bf16_run_resumes_exactly_with_its_bf16_memory(tmp_path, corpus_dir, monkeypatch):
    from longrange.train import TrainConfig, Trainer, train

    model_cfg = longrange.ModelConfig.from_name("memorizing-tiny")
    options = dict(batch_size=2, segment_len=16, warmup_steps=1, checkpoint_every=3, log_every=1, progress=False)
    run_cfg = TrainConfig(steps=6, precision="bf16", **options)
    train(model_cfg, run_cfg, str(corpus_dir), tmp_path / "once")
    step = Trainer.train_step

    def stop_after_the_checkpoint(self):
        if self.step == 3:  # the checkpoint of step 3 is written: a crash here loses nothing
            raise _Stop
        return step(self)

    monkeypatch.setattr(Trainer, "train_step", stop_after_the_checkpoint)
    with pytest.raises(_Stop):
        train(model_cfg, run_cfg, str(corpus_dir), tmp_path / "twice")
    monkeypatch.undo()
    loaded = []
    load = KNNMemory.load_state_dict
    monkeypatch.setattr(KNNMemory, "load_state_dict", lambda self, state: (load(self, state), loaded.append(self))[0])
    train(model_cfg, TrainConfig(steps=6, **options), str(corpus_dir), tmp_path / "twice", resume=True)  # auto
    assert loaded and all(store.dtype == store.keys.dtype == torch.bfloat16 for store in loaded)
    once, twice = (longrange.load(tmp_path / name) for name in ("once", "twice"))
    for (name, a), (_, b) in zip(once.state_dict().items(), twice.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
