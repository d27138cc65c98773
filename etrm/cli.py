"""The `etrm` command. Each subcommand lives beside the code it drives and
exposes `add_parser(subparsers)`, which registers it with a `func` default.

Errors: a bad input of any command ends in one line on stderr,
`etrm <command>: error: <message>`, with no traceback (`ETRM_DEBUG=1` shows it).
Exit status 2 for usage (argparse's own, a `UsageError`, or a path that cannot be
used: a missing file, an occupied output folder), 1 for content (a file that exists
but is wrong: every etrm error type is a `ValueError`). A command whose status 1
means a finding (`inspect`: NaN/Inf; `verify-decoder`: the decoders differ) sets
`error_status=2` so the two cannot be confused.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from etrm import __version__
from etrm.errors import UsageError  # the commands raise it as etrm.cli.UsageError too

# Subcommand -> the module providing it, in the order `etrm --help` lists them. Only the named
# command's module is imported: most import torch (3 s on a 2-core CPU), which `etrm build-data`
# and `etrm investigate` need not wait for before their first line.
COMMANDS = {
    "investigate": "etrm.investigate",
    "build-data": "etrm.data.build_command",
    "evaluate": "etrm.evaluate_command",
    "score": "etrm.evaluation.score",
    "inspect": "etrm.checkpoints",
    "verify-decoder": "etrm.checkpoints",
    "bench": "etrm.bench",
    "experiment1": "etrm.experiment1.command",
    "compare": "etrm.compare",
}
COMMAND_MODULES = list(dict.fromkeys(COMMANDS.values()))
DEBUG_ENV = "ETRM_DEBUG"
USAGE_STATUS, CONTENT_STATUS = 2, 1


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of the command `argv` names, or of every command (for help and usage errors)."""
    parser = argparse.ArgumentParser(prog="etrm", description="TRM/ETRM reference package and investigation suite")
    parser.add_argument("--version", action="version", version=f"etrm {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    named = next((a for a in argv or [] if not a.startswith("-")), None)
    if named in COMMANDS:
        modules = [COMMANDS[named]]
    elif "--version" in (argv or []):
        modules = []  # the version needs no command module (most import torch)
    else:
        modules = COMMAND_MODULES
    for name in modules:
        importlib.import_module(name).add_parser(subparsers)
    _name_commands(parser)
    return parser


def _name_commands(parser: argparse.ArgumentParser) -> None:
    # Each (sub)command records its own name ("etrm bench recursion") for its error line;
    # the innermost subparser's default wins.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.set_defaults(command_prog=sub.prog)
                _name_commands(sub)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:
        if os.environ.get(DEBUG_ENV):
            raise
        lines = str(err).strip().splitlines() or [type(err).__name__]
        # etrm's messages are one line; a third-party text inside one (torch's) may not be.
        more = f" (more with {DEBUG_ENV}=1)" if len(lines) > 1 else ""
        print(f"{args.command_prog}: error: {lines[0]}{more}", file=sys.stderr)
        if isinstance(err, (UsageError, OSError)):
            return USAGE_STATUS
        return getattr(args, "error_status", CONTENT_STATUS)


if __name__ == "__main__":
    # `python -m etrm.cli`: UsageError comes from etrm.errors, so the commands' errors are the
    # class this copy of the module catches.
    sys.exit(main())
