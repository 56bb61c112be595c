"""`longrange <command>`: a name -> command table.

Each command is a module in `longrange.commands` with ``add_arguments(parser)`` and
``run(args) -> int``; its docstring's first line is the one-line help. Printing happens here and in
the commands, never in the library.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import signal
import sys
from types import ModuleType

from longrange import __version__
from longrange.commands import (
    analyze,
    bench,
    compare,
    compressive_attention,
    convert,
    data,
    demo,
    export,
    generate,
    inspect_memory,
    presets,
    repro,
    train,
)
from longrange.commands import eval as eval_command

COMMANDS: dict[str, ModuleType] = {
    "demo": demo,
    "train": train,
    "eval": eval_command,
    "generate": generate,
    "presets": presets,
    "bench": bench,
    "repro": repro,
    "compressive-attention": compressive_attention,
    "analyze": analyze,  # the former name of compressive-attention (`analyze attention RUN`)
    "inspect-memory": inspect_memory,
    "data": data,
    "compare": compare,
    "convert": convert,
    "export": export,
}


def installed_version() -> str:
    """The installed distribution's version; the package's own `__version__` when it runs from a source tree
    that was never installed (no distribution metadata to read)."""
    try:
        return importlib.metadata.version("longrange")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="longrange",
        description="Train, evaluate, compare and sample from long-context Transformers.",
    )
    parser.add_argument("--version", action="version", version=f"longrange {installed_version()}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        doc = (module.__doc__ or name).strip()
        p = sub.add_parser(
            name, help=doc.splitlines()[0], description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    # tensors of 2 MiB and more in transparent huge pages (where the system grants them on request): long
    # sequences read rows of large tensors at random places (LSH's sorted items), and with 4 KiB pages the
    # page-table walks cost ~25% of the LSH kernel at 64K tokens. PyTorch reads this on its first large
    # allocation, so setting it here is early enough; an explicit THP_MEM_ALLOC_ENABLE=0 keeps it off.
    os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    if int(os.environ.get("RANK", "0")) > 0:  # under torchrun, rank 0 speaks for the run; others only warn
        level = logging.WARNING
    logging.basicConfig(level=level, format="%(message)s")
    try:
        check_encodable(args)
        return int(args._run(args) or 0)
    except (ValueError, OSError) as err:  # ConfigError, CheckpointError, bad data, unreadable files: one clear line
        print(f"longrange {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # Ctrl-C outside a training loop (start-up, eval, generate), a stopped compare
        print(f"\nlongrange {args.command}: {str(stop) or 'interrupted'}", file=sys.stderr)
        return getattr(stop, "exit_code", 128 + signal.SIGINT)


def check_encodable(args: argparse.Namespace) -> None:
    """Refuse (ValueError) an argument that is not valid UTF-8 (a path of other bytes, as Python reads it from
    the command line): what a run records (its folder, its corpus) is written as UTF-8 JSON and YAML, so such a
    name would train and then leave a run that cannot be read back."""
    for name, value in vars(args).items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str | os.PathLike) and not isinstance(item, bytes):
                try:
                    str(item).encode("utf-8")
                except UnicodeEncodeError:
                    raise ValueError(
                        f"{ascii(str(item))} (argument {name}) is not valid UTF-8; give a name in UTF-8"
                    ) from None


if __name__ == "__main__":
    sys.exit(main())
