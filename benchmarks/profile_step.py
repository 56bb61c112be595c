"""Where a training step's time goes: torch.profiler over one step of ours (and the peer) per system.

  python benchmarks/profile_step.py --systems memorizing,compressive --length 512 --d-model 256 --threads 1
Relative shares (self CPU time per op) are meaningful even on a loaded machine; absolute times are not.
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch
from torch.profiler import ProfilerActivity, profile

from longrange.bench.peers import SYSTEMS, Layout, our_step, peer_available, peer_step


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--systems", default=",".join(SYSTEMS))
    p.add_argument("--length", type=int, default=512)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--segment", type=int, default=256)
    p.add_argument("--knn-memory", type=int, default=64000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sides", default="ours,peer")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    layout = replace(Layout(), d_model=args.d_model, heads=args.heads, segment=args.segment, knn_memory=args.knn_memory)
    for system in args.systems.split(","):
        for side in args.sides.split(","):
            if side == "peer" and not peer_available(system):
                continue
            torch.manual_seed(0)
            step = (
                peer_step(system, layout, args.length)
                if side == "peer"
                else our_step(system, layout, args.length, False)
            )
            step()  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                step()
            events = prof.key_averages()
            total = sum(e.self_cpu_time_total for e in events)
            print(f"\n== {system} / {side}: {total / 1e3:.0f} ms self CPU in one step")
            for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
                print(f"{e.self_cpu_time_total / total:6.1%}  {e.count:5d}x  {e.key}")


if __name__ == "__main__":
    main()
