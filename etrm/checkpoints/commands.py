"""The `etrm inspect` and `etrm verify-decoder` commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from etrm.checkpoints.compare import compare_decoders
from etrm.checkpoints.inspection import inspect_checkpoint


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    inspect = subparsers.add_parser(
        "inspect",
        help="keys, shapes, statistics, NaN/Inf, saved config and EMA provenance of a checkpoint",
        description="Describe a checkpoint without running code from it. Exit status: 0, 1 when a tensor holds "
        "NaN/Inf, 2 when the file cannot be read.",
    )
    inspect.add_argument("checkpoint", type=Path, help="checkpoint file (e.g. step_518071)")
    inspect.add_argument("--stats-all", action="store_true", help="also read puzzle_emb.* tables for statistics")
    inspect.set_defaults(func=_inspect_command, error_status=2)  # 1 is a finding (NaN/Inf)

    verify = subparsers.add_parser(
        "verify-decoder",
        help="compare the decoder tensors of a TRM and an ETRM checkpoint",
        description="Per decoder tensor: equal, max and mean |difference|, parameters and buffers apart. "
        "Exit status: 0 when every decoder parameter is equal, 1 when any differs, 2 on a read error.",
    )
    verify.add_argument("--trm", required=True, type=Path, metavar="P", help="TRM checkpoint (the pretrained decoder)")
    verify.add_argument("--etrm", required=True, type=Path, metavar="P", help="ETRM checkpoint")
    verify.set_defaults(func=_verify_command, error_status=2)  # 1 is a finding (a decoder differs)


def _inspect_command(args: argparse.Namespace) -> int:
    result = inspect_checkpoint(args.checkpoint, stats_all=args.stats_all)  # errors: etrm.cli.main
    print(result.summary())
    return 1 if result.nonfinite_keys else 0


def _verify_command(args: argparse.Namespace) -> int:
    result = compare_decoders(args.trm, args.etrm)  # errors: etrm.cli.main
    print(result.summary())
    return 0 if result.all_params_equal else 1
