"""The `etrm score` command: re-score the official trainer's saved prediction dumps."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from etrm.errors import int_at_least
from etrm.evaluation.evaluator import DEFAULT_PASS_KS, SUBMISSION_FILE, ArcEvaluator
from etrm.evaluation.result import EvaluationError, EvaluationResult

IDENTIFIERS_FILE = "identifiers.json"
TEST_PUZZLES_FILE = "test_puzzles.json"
BATCH_KEYS = ("inputs", "puzzle_identifiers")
OUTPUT_KEYS = ("preds", "q_halt_logits")
PREDICTION_FILE_KEYS = BATCH_KEYS + OUTPUT_KEYS


def score_prediction_files(
    paths: Sequence[str | Path], data_dir: str | Path, save_dir: str | Path | None = None, **options: Any
) -> EvaluationResult:
    """Score the official trainer's ``step_<N>_all_preds.<rank>`` dumps (all ranks together).

    Each file is a ``torch.save``d dict of tensors with at least ``inputs``,
    ``puzzle_identifiers``, ``preds`` and ``q_halt_logits``; it is read with
    ``weights_only=True``, so loading never runs code. ``options`` go to ArcEvaluator.
    """
    if not paths:
        raise EvaluationError("no prediction files given")
    evaluator = ArcEvaluator.from_data_dir(data_dir, **options)
    for path in paths:
        dump = _load_prediction_file(Path(path))
        try:
            evaluator.update({k: dump[k] for k in BATCH_KEYS}, {k: dump[k] for k in OUTPUT_KEYS})
        except EvaluationError as err:
            raise EvaluationError(f"{path}: {err}") from None
    result = evaluator.result(save_dir)
    assert result is not None  # single process: always rank 0
    return result


def _load_prediction_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise EvaluationError(f"prediction file {path} not found")
    try:
        dump = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling refused (code), truncated zip, not a torch file ...
        raise EvaluationError(
            f"prediction file {path} could not be read safely (weights_only=True): {type(err).__name__}: {err}"
        ) from None
    if not isinstance(dump, dict):
        raise EvaluationError(f"prediction file {path} holds a {type(dump).__name__}, expected a dict of tensors")
    for key in PREDICTION_FILE_KEYS:
        if key not in dump:
            raise EvaluationError(f"prediction file {path} has no key {key!r} (keys: {sorted(dump)})")
        if not isinstance(dump[key], torch.Tensor):
            raise EvaluationError(f"prediction file {path}: {key!r} is a {type(dump[key]).__name__}, expected a tensor")
    return dump


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "score",
        help="score saved evaluation predictions with the ARC evaluator",
        description="Score the official trainer's step_<N>_all_preds.<rank> dumps (give every rank's file) "
        "with the ARC evaluator: pass@K averaged over the tasks that received predictions.",
    )
    parser.add_argument(
        "--predictions",
        nargs="+",
        required=True,
        type=Path,
        metavar="FILE",
        help="prediction dumps (torch.save'd dicts of tensors), one per rank",
    )
    parser.add_argument(
        "--data",
        required=True,
        type=Path,
        metavar="DIR",
        help=f"dataset root holding {IDENTIFIERS_FILE} and {TEST_PUZZLES_FILE}",
    )
    parser.add_argument("--save-dir", type=Path, metavar="DIR", help=f"write {SUBMISSION_FILE} here")
    parser.add_argument(
        "--pass-ks",
        nargs="+",
        type=int_at_least(1),
        default=list(DEFAULT_PASS_KS),
        metavar="K",
        help="K values of pass@K (default: %(default)s)",
    )
    parser.set_defaults(func=_score_command)


def _score_command(args: argparse.Namespace) -> int:
    # A bad dump or dataset raises; etrm.cli.main prints it as one line.
    result = score_prediction_files(args.predictions, args.data, save_dir=args.save_dir, pass_ks=args.pass_ks)
    print(result.summary())
    return 0
