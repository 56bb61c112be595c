"""Former name of `compressive-attention`: `analyze attention RUN` runs `compressive-attention RUN`.

Kept so that scripts written for the old name keep working; new scripts use `longrange compressive-attention`.
"""

from __future__ import annotations

import argparse

from longrange.commands import compressive_attention


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", choices=["attention"], help="the analysis: attention (the only one)")
    compressive_attention.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    return compressive_attention.run(args)
