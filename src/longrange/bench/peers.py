"""Training speed against the library a user would install instead (the `bench-peers` extra), side by side.

Each system is built twice on one layout: the peer as its README shows, ours configured to the same layers.
A point is one whole training step (forward + backward + AdamW) on L target tokens, batch 1, in a fresh process
(`measure_in_subprocess`); points are interleaved (repeat, system, length, side) so that drift on a shared
machine hits both sides alike, and each point keeps its fastest timed step. Systems with memories read the L tokens
as L / segment segments in order, carrying memories from one segment to the next within the step and
back-propagating each segment's loss (truncated BPTT, as both libraries train); the memories start empty at each
step as the peers' training loops do, and for the memorizing system ours is also run with its memory carried
across steps (how our trainer runs). Peers (pinned in pyproject's `bench-peers`):

- transformer: x-transformers ``TransformerWrapper(Decoder(attn_flash=True))``; ours ``full`` x depth.
- reformer: reformer-pytorch ``ReformerLM(causal=True, n_hashes=4, bucket_size=64)`` (reversible, every layer
  LSH); ours ``lsh`` x depth, reversible, n_hashes 4, bucket 64.
- compressive: compressive-transformer-pytorch with memory in the top half of the layers (mem = segment,
  cmem = segment / 4, rate 4, conv, attention reconstruction loss), through its ``AutoregressiveWrapper``;
  ours ``full`` below, ``compressive`` above with the same sizes.
- memorizing: memorizing-transformers-pytorch, plain layers 1-2, XL 3-4, XL + kNN 5-6 (its 1-based numbering),
  M kNN memories, k = 32, XL memory = segment, memories made per step by ``knn_memories_context``; ours ``full``
  x 2, ``xl`` x 2, ``knn`` x 2 (each knn layer has its own XL cache of one segment, as the peer's), with the
  peer's T5 relative bias in the XL layers (``xl.positions: t5``, the paper's layout; our memorizing presets use
  Transformer-XL positions there, see `attention/knn.py`). The peer also adds a T5 bias in its plain layers,
  which ours (``full``) have no option for.

Ours runs with the CPU settings `longrange train` applies (`train.runtime.configure_device`: glibc's allocator
keeps freed tensor memory, see `tune_cpu_allocator`; ``LONGRANGE_MALLOC_TUNING=0`` turns it off); the peers run
as installed.

The MFU column is `model_flops_per_token` of our config (the same layout) x tokens/s over the fp32 matmul
ceiling measured by the parent process at the start of the run. `compare_with_peers` runs the whole comparison;
`longrange.bench.report.peers_table` writes its table.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from longrange.bench.knn import fill_knn_memories
from longrange.bench.mfu import matmul_ceiling, mfu, model_flops_per_token
from longrange.bench.report import machine_meta
from longrange.config import ModelConfig
from longrange.model.build import build_model
from longrange.runtime import configure_device

SYSTEMS = ("transformer", "reformer", "compressive", "memorizing")
PEER_PACKAGES = {
    "transformer": "x_transformers",
    "reformer": "reformer_pytorch",
    "compressive": "compressive_transformer_pytorch",
    "memorizing": "memorizing_transformers_pytorch",
}


@dataclass
class Layout:
    """The layout both sides of the comparison share: vocab 256, d 512, depth 6, 8 heads, batch 1, segments 512,
    M = 64,000, k = 32."""

    vocab: int = 256
    d_model: int = 512
    depth: int = 6
    heads: int = 8
    segment: int = 512
    knn_memory: int = 64000
    topk: int = 32
    bucket: int = 64
    hashes: int = 4


def our_config(system: str, layout: Layout, length: int):
    """Our ModelConfig for `system` on `layout` at L = `length` tokens per step (segments for stateful systems)."""
    shared = {"vocab_size": layout.vocab, "d_model": layout.d_model, "n_heads": layout.heads}
    n = layout.depth
    if system == "transformer":
        return ModelConfig(**shared, layers=["full"] * n, segment_len=length)
    if system == "reformer":
        lsh = {"n_hashes": layout.hashes, "bucket_size": layout.bucket, "n_buckets": 2 * length // layout.bucket}
        return ModelConfig(**shared, layers=["lsh"] * n, segment_len=length, reversible=True, lsh=lsh)
    seg = min(layout.segment, length)
    if system == "compressive":
        sec = {"mem_len": seg, "cmem_len": seg // 4, "rate": 4, "compression": "conv", "loss": "attention"}
        layers = ["full"] * (n - n // 2) + ["compressive"] * (n // 2)
        return ModelConfig(**shared, layers=layers, segment_len=seg, compressive=sec)
    if system == "memorizing":
        third = n // 3
        layers = ["full"] * (n - 2 * third) + ["xl"] * third + ["knn"] * third
        knn = {"mem_len": seg, "memory_size": layout.knn_memory, "topk": layout.topk, "backend": "exact"}
        xl = {"mem_len": seg, "positions": "t5"}  # the peer's (and the paper's) T5 bias in the XL layers too
        return ModelConfig(**shared, layers=layers, segment_len=seg, xl=xl, knn=knn)
    raise ValueError(f"system={system!r} is not one of {list(SYSTEMS)}")


def our_step(system: str, layout: Layout, length: int, carry: bool, full_memory: bool = False):
    """A closure doing one training step of our model on random tokens (L + 1 of them: inputs and targets).

    ``carry``: memories carried from step to step; ``full_memory``: carried, and every kNN store filled to its M
    entries first (the steady state of a long run, which a few timed steps of an empty store never reach)."""
    cfg = our_config(system, layout, length)
    model = build_model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    tokens = torch.randint(1, layout.vocab, (1, length + 1))
    seg = cfg.segment_len
    held = {"state": None}
    if full_memory:
        carry = True
        held["state"] = model.init_state(1)
        fill_knn_memories(held["state"], 1)

    def step() -> None:
        state = held["state"] if carry else None
        opt.zero_grad(set_to_none=True)
        for start in range(0, length, seg):
            out = model(tokens[:, start : start + seg], state=state, targets=tokens[:, start + 1 : start + seg + 1])
            loss = out.loss if out.aux_loss is None else out.loss + out.aux_loss
            loss.backward()
            state = out.state.detach() if model.stateful else None
        opt.step()
        held["state"] = state

    return step


def peer_step(system: str, layout: Layout, length: int):
    """A closure doing one training step of the peer library, configured as its README shows."""
    tokens = torch.randint(1, layout.vocab, (1, length + 1))
    seg = min(layout.segment, length)
    n = layout.depth
    if system == "transformer":
        from x_transformers import Decoder, TransformerWrapper  # a peer (the bench-peers extra), timed here only

        model = TransformerWrapper(
            num_tokens=layout.vocab,
            max_seq_len=length,
            attn_layers=Decoder(dim=layout.d_model, depth=n, heads=layout.heads, attn_flash=True),
        )

        def losses():
            logits = model(tokens[:, :-1])
            yield F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:])

    elif system == "reformer":
        from reformer_pytorch import ReformerLM  # a peer (the bench-peers extra), timed here only

        model = ReformerLM(
            num_tokens=layout.vocab,
            dim=layout.d_model,
            depth=n,
            max_seq_len=length,
            heads=layout.heads,
            causal=True,
            bucket_size=layout.bucket,
            n_hashes=layout.hashes,
        )

        def losses():
            logits = model(tokens[:, :-1])
            yield F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:])

    elif system == "compressive":
        # a peer (the bench-peers extra), timed here only
        from compressive_transformer_pytorch import AutoregressiveWrapper, CompressiveTransformer

        net = CompressiveTransformer(
            num_tokens=layout.vocab,
            dim=layout.d_model,
            depth=n,
            heads=layout.heads,
            seq_len=seg,
            mem_len=seg,
            cmem_len=seg // 4,
            cmem_ratio=4,
            memory_layers=list(range(n - n // 2 + 1, n + 1)),  # 1-based: the top half
            enhanced_recurrence=True,
            gru_gated_residual=False,
            mogrify_gru=False,
        )
        model = AutoregressiveWrapper(net)

        def losses():
            for loss, aux_loss, _ in model(tokens, return_loss=True):
                yield loss + aux_loss

    elif system == "memorizing":
        from memorizing_transformers_pytorch import MemorizingTransformer  # a peer (bench-peers), timed here only

        third = n // 3
        directory = tempfile.mkdtemp(prefix="peer-knn-")
        model = MemorizingTransformer(
            num_tokens=layout.vocab,
            dim=layout.d_model,
            depth=n,
            heads=layout.heads,
            dim_head=layout.d_model // layout.heads,
            memorizing_layers=tuple(range(n - third + 1, n + 1)),
            max_knn_memories=layout.knn_memory,
            num_retrieved_memories=layout.topk,
            xl_memory_layers=tuple(range(n - 2 * third + 1, n + 1)),
            xl_max_memories=seg,
            knn_memories_directory=directory,
        )

        def losses():
            with model.knn_memories_context(batch_size=1) as knn_memories:
                xl_memories = None
                for start in range(0, length, seg):
                    loss, xl_memories = model(
                        tokens[:, start : start + seg],
                        knn_memories=knn_memories,
                        xl_memories=xl_memories,
                        labels=tokens[:, start + 1 : start + seg + 1],
                    )
                    xl_memories = [m.detach() for m in xl_memories]
                    yield loss

    else:
        raise ValueError(f"system={system!r} is not one of {list(SYSTEMS)}")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        for loss in losses():
            loss.backward()
        opt.step()

    return step


def run_point(point: dict) -> dict:
    """Time one point in this process: {"system", "side": peer|ours, "length", "carry", "full_memory", "steps",
    "warmup", layout}."""
    torch.set_num_threads(point["threads"])
    torch.manual_seed(0)
    layout = Layout(**point["layout"])
    if point["side"] == "peer":
        step = peer_step(point["system"], layout, point["length"])
    else:  # with the settings `longrange train` applies on the CPU (the allocator tuning; LONGRANGE_MALLOC_TUNING=0)
        configure_device(torch.device("cpu"))
        carry, full = point.get("carry", False), point.get("full_memory", False)
        step = our_step(point["system"], layout, point["length"], carry, full)
    for _ in range(point["warmup"]):
        step()
    times = []
    for _ in range(point["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    best = min(times)
    return {**point, "step_s": best, "tokens_per_s": point["length"] / best, "status": "ok"}


def measure_in_subprocess(point: dict, timeout: float) -> dict:
    """`run_point` in a fresh Python process (no allocator or thread-pool state shared between points)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(point["threads"])}
    cmd = [sys.executable, "-m", "longrange.bench.peers", json.dumps(point)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**point, "status": f"timeout after {timeout:.0f} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        reason = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**point, "status": f"failed: {reason}"}
    return json.loads(lines[-1])


def peer_available(system: str) -> bool:
    return importlib.util.find_spec(PEER_PACKAGES[system]) is not None


def compare_with_peers(
    systems: list[str],
    lengths: list[int],
    layout: Layout,
    *,
    threads: int,
    steps: int,
    warmup: int,
    repeats: int,
    ours_only: bool,
    timeout: float,
    on_point: Callable[[dict, dict], None] | None = None,
) -> tuple[list[dict], list[dict], dict]:
    """(the table's rows, the best measured point of each (system, length, side, memory), meta).

    Points are interleaved: each repeat runs every system and length, ours and the peer, the order of the sides
    reversed every other repeat; each point keeps its fastest round. `on_point(point, row)` sees each
    measurement as it is made.
    """
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        raise ValueError(f"--systems: unknown system {unknown[0]!r}; choose from {list(SYSTEMS)}")
    points = []
    for repeat in range(repeats):
        for system in systems:
            with_peer = not ours_only and peer_available(system)
            for length in lengths:
                runs = [("ours", False)] + ([("peer", False)] if with_peer else [])
                if system == "memorizing":  # memory carried across steps, as our trainer runs: as it grows
                    runs += [("ours", True), ("ours", "full")]  # over the timed steps, and full (M entries)
                for side, carry in runs if repeat % 2 == 0 else runs[::-1]:
                    point = {"system": system, "length": length, "side": side, "carry": bool(carry)}
                    points.append({**point, "full_memory": carry == "full"})
    meta = machine_meta(threads)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
    meta["commit"] = commit.strip() or "unknown"
    meta["layout"] = vars(layout)
    best: dict[tuple, dict] = {}
    for point in points:
        full = {**point, "threads": threads, "steps": steps, "warmup": warmup, "layout": vars(layout)}
        row = measure_in_subprocess(full, timeout)
        if on_point is not None:
            on_point(point, row)
        key = (point["system"], point["length"], point["side"], "full" if point["full_memory"] else point["carry"])
        if row["status"] == "ok" and row["tokens_per_s"] > best.get(key, {}).get("tokens_per_s", 0):
            best[key] = row
        elif key not in best:
            best[key] = row
    ceilings: dict[int, float] = {}
    rows = []
    for system in systems:
        for length in lengths:
            cfg = our_config(system, layout, length)
            if cfg.segment_len not in ceilings:
                ceilings[cfg.segment_len] = matmul_ceiling(cfg, cfg.segment_len, threads)["gflops"]
            flops, ceiling = model_flops_per_token(cfg), ceilings[cfg.segment_len]
            peer = best.get((system, length, "peer", False), {})
            for memory in (False, True, "full") if system == "memorizing" else (False,):
                ours = best.get((system, length, "ours", memory), {})
                ours_tps, peer_tps = ours.get("tokens_per_s"), peer.get("tokens_per_s")
                rows.append(
                    {
                        "system": system + {True: " (memory carried)", "full": " (memory full)"}.get(memory, ""),
                        "length": length,
                        "peer_tokens_per_s": peer_tps,
                        "ours_tokens_per_s": ours_tps,
                        "ratio": ours_tps / peer_tps if ours_tps and peer_tps else None,
                        "model_flops_per_token": flops,
                        "ceiling_gflops": ceiling,
                        "ours_mfu": mfu(flops, ours_tps, ceiling) if ours_tps else None,
                        "peer_mfu": mfu(flops, peer_tps, ceiling) if peer_tps else None,
                        "status": f"ours {ours.get('status', 'not run')}, peer {peer.get('status', 'not run')}",
                    }
                )
    return rows, list(best.values()), meta


if __name__ == "__main__":
    print(json.dumps(run_point(json.loads(sys.argv[1]))), flush=True)
