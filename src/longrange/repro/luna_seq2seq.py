"""Luna as an encoder-decoder (Ma et al. 2021, the machine-translation setting) vs a full-attention one.

A bidirectional Luna encoder and a causal Luna decoder with cross-attention to the encoder
(`longrange.model.seq2seq`), and the same encoder-decoder with full attention, are trained with the same
data, steps, sizes and optimiser on a generated transduction task whose answer needs the whole input
(`longrange.tasks.transduction`: reverse (default) or sort a sequence of 1 to ``--max-len`` symbols).
Reported: exact-match accuracy of greedy decoding on held-out sequences (every output symbol and the end
token right), per-token accuracy under teacher forcing, training milliseconds per step and greedy decoding
milliseconds per sequence. Luna decodes from its recurrent state (one token per step, O(1) in the target
length); full attention has no decode cache and recomputes the prefix at every step.

CPU budget: training at ``--max-len 32`` (600 steps x 32: about 12 minutes for both models on 2 shared
threads); the speed at long lengths is measured separately at ``--speed-len`` (512 by default: the time of
training steps and of greedy decoding at that length, on the trained models, not accuracy), since training to
exact match at 512 symbols takes hours on a CPU (``--max-len 512`` runs it). Paper's claim: Luna matches the
Transformer on translation (BLEU within ~0.5) at lower cost. The machine may be shared: times are noisy.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from longrange.config import ModelConfig
from longrange.model.seq2seq import Seq2Seq
from longrange.tasks.transduction import BOS, FIRST_SYMBOL, IGNORE, TASKS, exact_match, transduction_batch

MODELS = {  # name -> (attention kind, section overrides)
    "luna-16": ("luna", {"luna": {"proj_len": 16, "chunk_len": 32}}),
    "full": ("full", {"full": {"rotary": False}}),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=TASKS, default="reverse")
    p.add_argument("--min-len", type=int, default=1)
    p.add_argument("--max-len", type=int, default=32)
    p.add_argument("--symbols", type=int, default=8, help="alphabet size")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--d-model", type=int, default=64)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--layers", type=int, default=2, help="encoder layers (and as many decoder layers)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--test", type=int, default=64, help="held-out sequences decoded greedily")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--speed-len", type=int, default=512, help="length the speed is also measured at (0: skip)")
    p.add_argument("--speed-batch", type=int, default=4)


def build(args: argparse.Namespace, name: str, max_len: int | None = None) -> Seq2Seq:
    kind, sections = MODELS[name]
    cfg = ModelConfig(
        name=f"seq2seq-{name}",
        vocab_size=FIRST_SYMBOL + args.symbols,
        d_model=args.d_model,
        n_heads=args.heads,
        layers=[kind] * args.layers,
        positions="sinusoidal",
        max_len=max(args.max_len, max_len or 0) + 1,
        **sections,
    )
    return Seq2Seq(cfg)


def train_and_test(args: argparse.Namespace, name: str) -> dict:
    torch.manual_seed(0)
    model = build(args, name, args.speed_len)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(0)
    warmup = max(1, args.steps // 10)
    start = time.perf_counter()
    for step in range(args.steps):
        if step == 1:  # the first step is a warm-up
            start = time.perf_counter()
        progress = step / max(1, args.steps)
        scale = min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(progress * 3.14159))))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * float(scale)
        source, mask, target_in, target_out = transduction_batch(
            args.task, args.batch_size, args.min_len, args.max_len, args.symbols, gen
        )
        logits = model(source, target_in, mask)
        loss = F.cross_entropy(logits.flatten(0, 1), target_out.flatten(), ignore_index=IGNORE)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if (step + 1) % max(1, args.steps // 10) == 0:
            print(f"{name} step {step + 1}: loss {loss.item():.4f}", flush=True)
    step_s = (time.perf_counter() - start) / max(1, args.steps - 1)
    model.eval()
    test_gen = torch.Generator().manual_seed(1)
    source, mask, target_in, target_out = transduction_batch(
        args.task, args.test, args.min_len, args.max_len, args.symbols, test_gen
    )
    with torch.no_grad():
        scored = target_out != IGNORE
        forced = model(source, target_in, mask).argmax(-1)
        token_accuracy = float(((forced == target_out) & scored).sum() / scored.sum())
        start = time.perf_counter()
        predicted = model.greedy(source, mask, BOS, target_out.shape[1])
        decode_s = (time.perf_counter() - start) / args.test
    speed = speed_at(args, model, args.speed_len) if args.speed_len else {}
    return {
        **speed,
        "exact_match": float(exact_match(predicted, target_out).float().mean()),
        "token_accuracy_teacher_forced": token_accuracy,
        "step_ms": step_s * 1000,
        "decode_ms_per_sequence": decode_s * 1000,
        "final_loss": loss.item(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def speed_at(args: argparse.Namespace, model: Seq2Seq, length: int) -> dict:
    """Training ms / step (2 timed after a warm-up) and greedy ms / sequence at sources and targets of `length`."""
    gen = torch.Generator().manual_seed(2)
    batch = transduction_batch(args.task, args.speed_batch, length, length, args.symbols, gen)
    model.train()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        logits = model(batch[0], batch[2], batch[1])
        F.cross_entropy(logits.flatten(0, 1), batch[3].flatten(), ignore_index=IGNORE).backward()
        times.append(time.perf_counter() - start)
    model.zero_grad()
    model.eval()
    start = time.perf_counter()
    model.greedy(batch[0], batch[1], BOS, length + 1)
    decode = (time.perf_counter() - start) / args.speed_batch
    return {"speed_len": length, "speed_step_ms": sum(times[1:]) / 2 * 1000, "speed_decode_ms": decode * 1000}


def run(args: argparse.Namespace) -> str:
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise ValueError(f"--models: {unknown} not in {sorted(MODELS)}")
    results, rows = {}, []
    for name in names:
        r = results[name] = train_and_test(args, name)
        rows.append(
            f"| {name} | {r['parameters'] / 1e3:.0f}K | {r['exact_match']:.1%} | "
            f"{r['token_accuracy_teacher_forced']:.1%} | {r['step_ms']:.0f} | {r['decode_ms_per_sequence']:.0f} |"
            + (f" {r['speed_step_ms']:.0f} | {r['speed_decode_ms']:.0f} |" if args.speed_len else "")
        )
        print(rows[-1], flush=True)
    settings = {k: v for k, v in vars(args).items() if isinstance(v, int | float | str) and k != "func"}
    (args.out / "luna_seq2seq.json").write_text(json.dumps({"results": results, "settings": settings}, indent=1))
    return (
        f"Task: {args.task} sequences of {args.min_len}-{args.max_len} symbols (alphabet {args.symbols}); "
        f"{args.steps} steps x {args.batch_size}, d_model {args.d_model}, {args.layers} encoder + {args.layers} "
        f"decoder layers, {torch.get_num_threads()} thread(s); exact match over {args.test} held-out sequences, "
        "greedy (Luna: recurrent state; full: recomputed prefix). Times on a shared machine: noisy.\n\n"
        "| model | parameters | exact match | token accuracy (teacher forced) | train ms / step "
        "| greedy ms / sequence |"
        + (
            f" train ms / step at {args.speed_len} (batch {args.speed_batch}) | greedy ms / sequence at "
            f"{args.speed_len} |"
            if args.speed_len
            else ""
        )
        + "\n|---|---:|---:|---:|---:|---:|"
        + ("---:|---:|" if args.speed_len else "")
        + "\n"
        + "\n".join(rows)
    )
