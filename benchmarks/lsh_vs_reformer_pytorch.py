"""One LSH attention layer, forward + backward: ours (`lsh-4`) against reformer-pytorch's `LSHSelfAttention` on
the same layout (d_model 512, 8 heads, causal, buckets of 64, 4 hash rounds, batch 1), with the arithmetic floor
of the work both must do at the matmul rate measured in the same run.

    python benchmarks/lsh_vs_reformer_pytorch.py --lengths 16384,65536 --threads 2 --out benchmarks/results/lsh-peer

The floor counts only matrix products, at the measured rate of a (L, 512) x (512, 512) product: the three
projections (shared QK, V, output) forward and their six backward products (input and weight gradients), and
the band attention's products: each query scores 2 x 64 keys (its chunk and the one before) per round, forward
(scores, weights x values) and backward (the scores recomputed, then four products). Sorting, hashing, gathers,
softmax and the rest come on top. A time ratio below floor / peer is out of reach on this machine.
Each point runs in a fresh process (needs the `bench-peers` extra for the peer side).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

D, HEADS, BUCKET, ROUNDS = 512, 8, 64, 4


def _time_point(side: str, length: int, threads: int, repeats: int) -> float:
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if side == "ours":
        from longrange.bench.variants import VARIANTS

        module, run = VARIANTS[f"lsh-{ROUNDS}"](D, HEADS, True)
    else:
        from reformer_pytorch import LSHSelfAttention

        module = LSHSelfAttention(dim=D, heads=HEADS, bucket_size=BUCKET, n_hashes=ROUNDS, causal=True)

        def run(m, x):
            return m(x)

    x = torch.randn(1, length, D, requires_grad=True)

    def step() -> None:
        run(module, x).sum().backward()

    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _matmul_rate(length: int, threads: int) -> float:
    """GFLOP/s of a (L, 512) x (512, 512) product, the projections' shape (median of 5)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(length, D), torch.randn(D, D)
    torch.mm(a, b)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * length * D * D / sorted(times)[2] / 1e9


def floor_gflop(length: int) -> float:
    projections = 9 * 2 * length * D * D  # 3 forward, 6 backward
    keys_per_query = 2 * BUCKET  # the query's chunk and the one before (causal)
    one_product = 2 * length * ROUNDS * keys_per_query * (D // HEADS) * HEADS
    band = 7 * one_product  # forward: scores, weights x values; backward: scores again, dV, dP, dQ, dK
    return (projections + band) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", default="16384,65536")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/lsh-peer"))
    parser.add_argument("--point", help=argparse.SUPPRESS)  # internal: SIDE:LENGTH, run in a fresh process
    args = parser.parse_args()
    if args.point:
        side, length = args.point.split(":")
        value = _matmul_rate(int(length), args.threads) if side == "rate" else None
        value = value or _time_point(side, int(length), args.threads, args.repeats)
        print(json.dumps({"value": value}))
        return

    def fresh(side: str, length: int) -> float:
        cmd = [sys.executable, __file__, "--point", f"{side}:{length}", "--threads", str(args.threads)]
        done = subprocess.run([*cmd, "--repeats", str(args.repeats)], capture_output=True, text=True, check=True)
        return json.loads(done.stdout.strip().splitlines()[-1])["value"]

    rows = []
    for length in [int(n) for n in args.lengths.split(",")]:
        rate = fresh("rate", length)
        ours, peer = fresh("ours", length), fresh("peer", length)
        floor = floor_gflop(length) / rate
        rows.append({"length": length, "ours_s": ours, "peer_s": peer, "ratio": ours / peer, "matmul_gflops": rate})
        rows[-1].update({"floor_s": floor, "floor_ratio": floor / peer, "ours_over_floor": ours / floor})
        print(json.dumps(rows[-1]), flush=True)
    lines = [
        f"LSH-{ROUNDS} layer, forward + backward, d {D}, {HEADS} heads, buckets {BUCKET}, causal, batch 1, "
        f"{args.threads} thread(s); median of {args.repeats}.",
        "",
        "| L | ours s | reformer-pytorch s | ratio | matmul GFLOP/s | floor s | floor / peer | ours / floor |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['length']:,} | {r['ours_s']:.3f} | {r['peer_s']:.3f} | {r['ratio']:.3f}x | {r['matmul_gflops']:.0f} "
            f"| {r['floor_s']:.3f} | {r['floor_ratio']:.3f}x | {r['ours_over_floor']:.2f} |"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(rows, indent=1))
    (args.out / "results.md").write_text(table)


if __name__ == "__main__":
    main()
