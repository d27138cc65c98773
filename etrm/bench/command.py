"""`etrm bench recursion`: our recursion step beside the official code and a researcher's model.

One row per `--size` (repeatable) in the mode `--compile` picks and the dtype `--dtype` picks,
each side timed interleaved with the others in one run (etrm.bench.compare), each row with the
step's kernel floor in the same dtype. `--json` prints one JSON object per row and line.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from etrm.bench.compare import UserModel, compare, cxx_compiler
from etrm.bench.timing import BENCH_DEVICES, BENCH_MODELS, SIZES, matmul_gflops
from etrm.errors import UsageError
from etrm.layers import CastedLinear, onednn_linear_available, use_onednn_linear

DTYPES = ("float32", "bfloat16")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="time the recursion step", description="Timing for before/after checks of a model change."
    )
    commands = parser.add_subparsers(dest="bench_command", metavar="WHAT", required=True)
    rec = commands.add_parser(
        "recursion",
        help="our recursion step against its kernel floor, the official code and your model",
        description="Median time of our decoder's inference recursion step, timed interleaved with the "
        "official TRM code's (--against-official) and your model's (--model-code), against the step's kernel "
        "floor (its projections and attention timed alone) in the same dtype; eager, our full inference and "
        "training ACT steps too.",
    )
    rec.add_argument(
        "--size",
        choices=list(SIZES),
        action="append",
        help="benchmark size; repeat for several rows (default: tiny)",
    )
    rec.add_argument("--model", choices=BENCH_MODELS, default="trm", help="our model (default: %(default)s)")
    rec.add_argument("--device", choices=BENCH_DEVICES, default="cpu", help="device (default: %(default)s)")
    rec.add_argument(
        "--dtype", choices=DTYPES, default="float32", help="forward dtype of every side (default: %(default)s)"
    )
    rec.add_argument(
        "--compile",
        action="store_true",
        help="run every side under torch.compile, as the official and origin ETRM trainers do "
        "(on CPU this needs a C++ compiler)",
    )
    rec.add_argument(
        "--against-official",
        type=Path,
        metavar="DIR",
        help="also time the official TRM code from this checkout of SamsungSAILMontreal/TinyRecursiveModels, "
        "with our weights (its requirements, pydantic and einops, are yours to install)",
    )
    rec.add_argument(
        "--model-code",
        type=Path,
        metavar="ROOT",
        help="also time your model, built from the models/ package under ROOT as etrm investigate builds it "
        "(this runs that code); needs --model-config",
    )
    rec.add_argument(
        "--model-config",
        type=Path,
        metavar="FILE",
        help="your config/arch/*.yaml or a trainer's all_config.yaml; its sizes are set to the benchmark's",
    )
    rec.add_argument(
        "--repeat", type=int, default=5, metavar="N", help="timed calls of each side (default: %(default)s)"
    )
    rec.add_argument(
        "--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's own choice)"
    )
    rec.add_argument(
        "--onednn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="route large gradient-free float32 CPU products through oneDNN's linear kernel "
        "(etrm.layers.use_onednn_linear; default: on where this torch build has it); "
        "--no-onednn times torch's F.linear instead",
    )
    rec.add_argument(
        "--matmul",
        action="store_true",
        help="also measure a large float32 matmul's GFLOP/s and the recursion's share of it",
    )
    rec.add_argument("--json", action="store_true", help="print one JSON object per row and line instead of text")
    rec.set_defaults(func=_recursion_command)


def _user_model(args: argparse.Namespace) -> UserModel | None:
    if (args.model_code is None) != (args.model_config is None):
        raise UsageError("--model-code and --model-config go together: your code's root and the config it builds")
    if args.model_code is None:
        return None
    for flag, path in (("--model-code", args.model_code), ("--model-config", args.model_config)):
        if not path.exists():
            raise UsageError(f"{flag} {path}: no such file or folder")
    return UserModel(args.model_code, args.model_config)


def _check_arguments(args: argparse.Namespace) -> None:
    if args.repeat < 1 or (args.threads is not None and args.threads < 1):
        raise UsageError("--repeat and --threads must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but CUDA is not available on this machine")
    if args.onednn and not onednn_linear_available():
        raise UsageError("--onednn but oneDNN's linear kernel is not in this torch build")
    if args.compile and args.device == "cpu" and cxx_compiler() is None:
        raise UsageError("--compile on CPU needs a C++ compiler for torch.compile (none of $CXX, c++, g++, clang++)")
    if args.against_official is not None and args.model != "trm":
        raise UsageError("--against-official times the official TRM decoder: use it with --model trm")
    if args.against_official is not None and not args.against_official.is_dir():
        raise UsageError(f"--against-official {args.against_official}: no such folder")


def _recursion_command(args: argparse.Namespace) -> int:
    _check_arguments(args)
    user = _user_model(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    previous = use_onednn_linear(CastedLinear.onednn if args.onednn is None else args.onednn)
    try:
        for size in args.size or ["tiny"]:
            row = compare(
                size,
                model=args.model,
                dtype=args.dtype,
                device=args.device,
                repeat=args.repeat,
                compiled=args.compile,
                official=args.against_official,  # imported afresh per row: --model-code's `models` replaces it
                user=user,
                progress=not args.json,
            )
            if args.matmul:
                row["matmul_gflops"] = matmul_gflops(args.device)
            print(json.dumps(row, sort_keys=True) if args.json else describe(row), flush=True)
    finally:
        use_onednn_linear(previous)
    return 0


def describe(row: Mapping[str, Any]) -> str:
    """A row as text: the setting, then one line per side timed."""
    c = row["config"]
    lines = [
        f"recursion step: size {row['size']} (hidden {c['hidden_size']}, heads {c['num_heads']}, "
        f"seq {c['seq_len']}+{c['puzzle_emb_len']}, batch {row['batch']}, H {c['H_cycles']}, L {c['L_cycles']}, "
        f"L_layers {c['L_layers']}, {row['dtype']}), model {row['model']}, {row['device']}, {row['mode']}, "
        f"{row['threads']} threads" + (", oneDNN linear" if row["onednn_linear"] else ""),
        f"  kernel floor:   {row['floor_ms']:10.2f} ms  (projections and attention alone, {row['dtype']})",
        f"  ours:           {row['ours_ms']:10.2f} ms  {row['ours_over_floor']:.2f}x the floor"
        f"  (median of {row['repeat']})",
    ]
    if row["official_ms"] is not None:
        lines.append(
            f"  official code:  {row['official_ms']:10.2f} ms  {row['official_ms'] / row['floor_ms']:.2f}x the floor; "
            f"ours is {row['ours_over_official']:.2f}x its time"
        )
    if row["user_ms"] is not None:
        user = row["user_model"]
        lines.append(
            f"  your model:     {row['user_ms']:10.2f} ms  {row['user_over_ours']:.2f}x ours "
            f"(one ACT step of {user['name']}, {user['config']})"
        )
    if row["infer_ms"] is not None:
        lines.append(
            f"  our ACT steps: inference step: {row['infer_ms']:.2f} ms, training step: {row['train_ms']:.2f} ms"
        )
    lines.append(
        f"  decoder: {row['flops'] / 1e9:.2f} GFLOP per step -> {row['gflops']:.1f} GFLOP/s"
        + (" (the encoder's work is in the ACT steps' time, not in the count)" if c["model_type"] != "trm" else "")
    )
    if "matmul_gflops" in row:
        lines.append(
            f"  float32 matmul: {row['matmul_gflops']:.1f} GFLOP/s "
            f"(the recursion reaches {100 * row['gflops'] / row['matmul_gflops']:.0f}% of it)"
        )
    return "\n".join(lines)


__all__ = ["DTYPES", "add_parser", "describe"]
