"""Show what a Memorizing Transformer retrieves: for one token, the earlier spans of the document
its top-k kNN retrievals came from, with their weights and the layer's gate per head.

Example: longrange inspect-memory runs/mem --doc notes.txt --at 12000 --k 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from longrange.attention.knn import KNNAttention
from longrange.model.io import load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", type=Path, help="run or checkpoint directory of a memorizing model")
    parser.add_argument("--doc", type=Path, required=True, help="text file: the document to read")
    parser.add_argument("--at", type=int, required=True, help="byte position of the token to inspect")
    parser.add_argument("--k", type=int, default=8, help="retrievals to show per head")
    parser.add_argument("--context", type=int, default=24, help="bytes of context shown around each span")


def inspect(model, data: bytes, at: int, k: int) -> list[dict]:
    layers = [(i, b.attention) for i, b in enumerate(model.blocks) if isinstance(b.attention, KNNAttention)]
    if not layers:
        raise ValueError("this model has no kNN layer; use a memorizing-* run")
    if not 0 < at < len(data):
        raise ValueError(f"--at {at} is outside the document (1..{len(data) - 1})")
    seg = model.config.segment_len
    tokens = torch.tensor([list(data[: at + 1])])
    state = model.init_state(1)
    model.eval()
    with torch.no_grad():
        start = 0
        while start <= at:  # segments before the one holding `at`, then that one
            end = min(start + seg, at + 1)
            last = end > at
            for _, layer in layers:
                layer.inspect = last
            state = model(tokens[:, start:end], state=state).state
            start = end
    report = []
    for index, layer in layers:
        r = layer.last_retrieval
        layer.inspect, layer.last_retrieval = False, None
        if r is None:
            report.append({"layer": index, "heads": [], "note": "memory empty at this position"})
            continue
        store = state.layers[index].store
        heads = []
        for h in range(r["weights"].shape[1]):
            w, slots, found = r["weights"][0, h, -1], r["slots"][0, h, -1], r["found"][0, h, -1]
            order = w.argsort(descending=True)[:k]
            hits = [{"position": int(store.position[0, slots[j]]), "weight": float(w[j])} for j in order if found[j]]
            heads.append({"head": h, "gate": float(r["gate"][h]), "retrievals": hits})
        report.append({"layer": index, "heads": heads})
    return report


def run(args: argparse.Namespace) -> int:
    model = load(args.run)
    data = args.doc.read_bytes()
    report = inspect(model, data, args.at, args.k)
    print(f"token {args.at}: {data[max(0, args.at - args.context) : args.at + 1]!r}")
    for layer in report:
        for head in layer["heads"]:
            print(f"layer {layer['layer']} head {head['head']} (gate {head['gate']:.2f}):")
            for hit in head["retrievals"]:
                p = hit["position"]
                span = data[max(0, p - args.context) : p + 1]
                print(f"  {hit['weight']:.3f}  byte {p:>7}: {span!r}")
        if not layer["heads"]:
            print(f"layer {layer['layer']}: {layer['note']}")
    return 0
