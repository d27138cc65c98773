"""The `etrm` command. Each subcommand lives beside the code it drives and
exposes `add_parser(subparsers)`, which registers it with a `func` default."""
from __future__ import annotations

import argparse
import importlib
import sys

# Modules providing subcommands, in the order `etrm --help` lists them.
COMMAND_MODULES = [
    "etrm.investigate",
    "etrm.data.build",
    "etrm.inference",
    "etrm.evaluation",
    "etrm.checkpoints",
    "etrm.bench",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="etrm", description="TRM/ETRM reference package and investigation suite")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
