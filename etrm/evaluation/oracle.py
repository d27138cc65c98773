"""Synthetic predictions for the evaluator's checks: a (batch, outputs) pair in which every
answer is correct, and the subset-size scores that hypothesis 6 compares."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from etrm.data.grids import BLANK_IDENTIFIER_ID, DEFAULT_CANVAS, as_grid, encode_grid, parse_augmentation_name
from etrm.evaluation.evaluator import ArcEvaluator
from etrm.evaluation.result import EvaluationError


def oracle_predictions(
    identifiers: Sequence[str],
    test_puzzles: Mapping[str, Mapping[str, Any]],
    tasks: Iterable[str] | None = None,
    canvas: int = DEFAULT_CANVAS,
    q_halt_logit: float = 0.0,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A (batch, outputs) pair in which every prediction is correct.

    One row per (identifier of a chosen task, test input): the test input and its
    output, both under the identifier's augmentation, as a model that solved the task
    would emit them. A correct evaluator scores the chosen tasks 1.0 at every K whatever
    their number; rows follow ``identifiers`` order. ``tasks`` defaults to every task.
    """
    chosen = set(test_puzzles if tasks is None else tasks)
    unknown = chosen - set(test_puzzles)
    if unknown:
        raise EvaluationError(f"tasks not in test_puzzles: {sorted(unknown)}")
    ids, inputs, preds = [], [], []
    for identifier, name in enumerate(identifiers):
        if identifier == BLANK_IDENTIFIER_ID:
            continue
        task, aug = parse_augmentation_name(name)
        if task not in chosen:
            continue
        for pair in test_puzzles[task]["test"]:
            ids.append(identifier)
            inputs.append(encode_grid(aug.apply(as_grid(pair["input"])), canvas))
            preds.append(encode_grid(aug.apply(as_grid(pair["output"])), canvas))
    if not ids:
        raise EvaluationError(f"no identifier names any of the tasks {sorted(chosen)}")
    batch = {
        "inputs": torch.from_numpy(np.stack(inputs)).to(torch.int32),
        "puzzle_identifiers": torch.tensor(ids, dtype=torch.int32),
    }
    outputs = {
        "preds": torch.from_numpy(np.stack(preds)).to(torch.int32),
        "q_halt_logits": torch.full((len(ids),), q_halt_logit, dtype=torch.float32),
    }
    return batch, outputs


def all_correct_subset_scores(
    make_evaluator: Callable[[], ArcEvaluator],
    identifiers: Sequence[str],
    test_puzzles: Mapping[str, Mapping[str, Any]],
    sizes: Sequence[int] = (4, 64),
    metric: str = "ARC/pass@1",
) -> dict[int, float]:
    """``metric`` of a fresh evaluator fed oracle predictions for the first ``size`` tasks.

    The subset-size check of hypothesis 6: a correct evaluator gives 1.0 for every size;
    one that divides by all test tasks (the official evaluator) gives ``size / len(test_puzzles)``.
    ``make_evaluator`` returns any object with ArcEvaluator's begin_round/update/result.
    """
    scores = {}
    for size in sizes:
        if not 0 < size <= len(test_puzzles):
            raise ValueError(f"subset size {size} is not in 1..{len(test_puzzles)} (the number of test tasks)")
        evaluator = make_evaluator()
        evaluator.begin_round()
        evaluator.update(*oracle_predictions(identifiers, test_puzzles, list(test_puzzles)[:size]))
        scores[size] = evaluator.result().metrics[metric]
    return scores
