"""List the model presets with their sizes.

Example: longrange presets
"""

from __future__ import annotations

import argparse

from longrange.config import ModelConfig, preset_names
from longrange.model.build import build_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", default="", help="only presets whose name contains this text")


def run(args: argparse.Namespace) -> int:
    print(f"{'preset':24} {'layers':>6} {'d_model':>7} {'heads':>5} {'segment':>7} {'params':>10}  attention")
    for name in preset_names():
        if args.filter not in name:
            continue
        cfg = ModelConfig.from_name(name)
        try:
            params = f"{build_model(cfg).num_parameters():,}"
        except ValueError:  # a mechanism not registered in this build
            params = "n/a"
        kinds = ",".join(sorted(set(cfg.layers)))
        sizes = f"{cfg.n_layers:>6} {cfg.d_model:>7} {cfg.n_heads:>5} {cfg.segment_len:>7}"
        print(f"{name:24} {sizes} {params:>10}  {kinds}")
    return 0
