"""ARC-AGI evaluator (DESIGN.md section 6): voting and pass@K over a round of predictions.

Every scored row is a model's answer to one test input of one puzzle identifier
(an augmentation of an ARC task). The evaluator crops the answer and the input from
their token canvases, undoes the augmentation named by the identifier, and votes:
per (task, test input) each distinct answer collects a count and the mean
``sigmoid(q_halt)`` of the rows that gave it. Answers are ranked by (count, mean q),
ties broken by the answer's hash, and pass@K asks whether the correct output is among
the top K. A task scores the mean over its test inputs; the metric is the mean over
the tasks that received predictions.

Three departures from the official TRM evaluator (``evaluators/arc.py``), each a way
the investigation's numbers went wrong:

* The official metric divides by *all* tasks in ``test_puzzles.json``, so evaluating
  a subset of 4 all-correct tasks reports 4/400. Here the denominator is the number of
  tasks that received predictions (``denominator="all_test_tasks"`` reproduces the old
  policy, for negative controls and for comparing with old logs only).
* The official evaluator keeps votes across evaluation rounds by default, so a new
  checkpoint's votes pool silently with earlier ones. Here every round starts fresh
  unless ``pool_rounds=True``.
* The official ranking depends on the order in which equal-vote answers arrived.
  Here ties are broken by hash and mean q is summed exactly (``math.fsum``), so the
  result does not depend on batch size, batch order or the number of ranks.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from etrm.data.grids import BLANK_IDENTIFIER_ID, Augmentation, as_grid, decode_grid, parse_augmentation_name
from etrm.data.layout import DatasetFormatError, load_identifiers, load_test_puzzles
from etrm.evaluation.result import EvaluationError, EvaluationResult

DEFAULT_PASS_KS = (1, 2, 5, 10, 100, 1000)
SUBMISSION_ATTEMPTS = 2  # ARC Prize scoring accepts two attempts per test input
DENOMINATORS = ("evaluated", "all_test_tasks")
SUBMISSION_FILE = "submission.json"

# votes[(task, input_hash)][prediction_hash] -> sigmoid(q_halt) of every row that gave it
Votes = dict[tuple[str, str], dict[str, list[float]]]


def grid_hash(grid: np.ndarray) -> str:
    """SHA-256 of a grid's shape and uint8 bytes: equal hashes mean equal grids."""
    arr = np.ascontiguousarray(grid, dtype=np.uint8)
    if arr.ndim != 2:
        raise ValueError(f"grid_hash expects a 2-D grid, got shape {arr.shape}")
    return hashlib.sha256(bytes(arr.shape) + arr.tobytes()).hexdigest()


def rank_predictions(votes: Mapping[str, Sequence[float]]) -> list[str]:
    """Order candidate answers best first: more votes, then higher mean q, then lower hash.

    ``votes`` maps an answer's hash to the ``sigmoid(q_halt)`` of every row that gave it.
    The mean uses ``math.fsum`` (exactly rounded), so it is the same whatever order the
    rows arrived in; the hash tie-break makes the whole ranking independent of arrival.
    """

    def key(item: tuple[str, Sequence[float]]) -> tuple[int, float, str]:
        pred_hash, qs = item
        return -len(qs), -math.fsum(qs) / len(qs), pred_hash

    return [pred_hash for pred_hash, _ in sorted(votes.items(), key=key)]


@dataclass(frozen=True)
class _TestInput:
    input_hash: str
    label_hash: str


class ArcEvaluator:
    """Pass@K on ARC test inputs from a model's predictions on augmented puzzles.

    ``identifiers[i]`` is the name of puzzle identifier ``i`` (``<task>`` or
    ``<task>|||t<t>|||<mapping>``; index ``blank_identifier_id`` marks padding rows) and
    ``test_puzzles`` maps each task to its ``{"train": [...], "test": [{"input", "output"}]}``.

    Use: ``begin_round()``; ``update(batch, outputs)`` per batch (on every rank);
    ``result(save_dir)`` on every rank, which returns the result on rank 0 and None on
    the others. ``denominator`` is the averaging policy: ``"evaluated"`` (the default and
    the correct one) or ``"all_test_tasks"``, the official evaluator's division by every
    task in ``test_puzzles``, which makes a subset's score shrink with its size; it exists
    to reproduce old numbers and as a negative control for the hypothesis-6 checks.
    """

    def __init__(
        self,
        identifiers: Sequence[str],
        test_puzzles: Mapping[str, Mapping[str, Any]],
        pass_ks: Sequence[int] = DEFAULT_PASS_KS,
        pool_rounds: bool = False,
        denominator: str = "evaluated",
        blank_identifier_id: int = BLANK_IDENTIFIER_ID,
    ) -> None:
        if not pass_ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in pass_ks):
            raise ValueError(f"pass_ks must be positive integers, got {tuple(pass_ks)!r}")
        if denominator not in DENOMINATORS:
            raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
        if not test_puzzles:
            raise EvaluationError("test_puzzles is empty: there is nothing to evaluate against")
        self.identifiers = list(identifiers)
        self.pass_ks = tuple(sorted(set(pass_ks)))
        self.pool_rounds = pool_rounds
        self.denominator = denominator
        self.blank_identifier_id = blank_identifier_id
        self._tests = {task: _read_test_inputs(task, puzzle) for task, puzzle in test_puzzles.items()}
        self._test_input_hashes = {task: {t.input_hash for t in tests} for task, tests in self._tests.items()}
        self._parsed: dict[int, tuple[str, Augmentation]] = {}
        self._votes: Votes = {}
        self._grids: dict[str, np.ndarray] = {}
        self._num_predictions = 0
        self._round_closed = False

    @classmethod
    def from_data_dir(cls, data_dir: str | Path, **options: Any) -> ArcEvaluator:
        """Build from a dataset root in the official layout (``identifiers.json``, ``test_puzzles.json``)."""
        data_dir = Path(data_dir)
        try:
            identifiers, test_puzzles = load_identifiers(data_dir), load_test_puzzles(data_dir)
        except DatasetFormatError as err:
            raise EvaluationError(str(err)) from None
        return cls(identifiers, test_puzzles, **options)

    # --- rounds -----------------------------------------------------------------------------
    def begin_round(self) -> None:
        """Start an evaluation round: fresh votes, unless the evaluator pools rounds."""
        if not self.pool_rounds:
            self._votes = {}
            self._grids = {}
            self._num_predictions = 0
        self._round_closed = False

    def update(self, batch: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        """Add one batch: ``batch`` has ``inputs`` (B, S) and ``puzzle_identifiers`` (B,),
        ``outputs`` has ``preds`` (B, S) tokens and ``q_halt_logits`` (B,). Rows whose
        identifier is the blank one are padding and are dropped. The canvas is
        ``sqrt(S)``."""
        if self._round_closed:  # first update after result(): a new round, even without begin_round()
            self.begin_round()
        inputs = _as_array(batch, "inputs", "batch")
        identifiers = _as_array(batch, "puzzle_identifiers", "batch")
        preds = _as_array(outputs, "preds", "outputs")
        q_logits = _get(outputs, "q_halt_logits", "outputs")
        q_values = torch.as_tensor(q_logits).detach().to("cpu", torch.float64).sigmoid().numpy()
        if inputs.ndim != 2:
            raise EvaluationError(f"batch['inputs'] must be (batch, seq_len) tokens, got shape {inputs.shape}")
        num_rows, seq_len = inputs.shape
        for name, arr, shape in (
            ("batch['puzzle_identifiers']", identifiers, (num_rows,)),
            ("outputs['preds']", preds, (num_rows, seq_len)),
            ("outputs['q_halt_logits']", q_values, (num_rows,)),
        ):
            if arr.shape != shape:
                raise EvaluationError(
                    f"{name} has shape {arr.shape}, expected {shape} to match batch['inputs'] {inputs.shape}"
                )
        canvas = math.isqrt(seq_len)
        if canvas * canvas != seq_len:
            raise EvaluationError(f"seq_len {seq_len} is not a square canvas: cannot crop grids")
        scored = []  # validated first, recorded after: a bad row leaves the round untouched
        for row in np.flatnonzero(identifiers != self.blank_identifier_id):
            identifier = int(identifiers[row])
            task, aug = self._identifier(identifier)
            input_hash = grid_hash(aug.invert(decode_grid(inputs[row], canvas)))
            if input_hash not in self._test_input_hashes[task]:
                raise EvaluationError(
                    f"task {task!r}: the input of row {row} (identifier {identifier} "
                    f"{self.identifiers[identifier]!r}), with its augmentation undone, matches none of the "
                    f"task's {len(self._tests[task])} test inputs; the inverse augmentation or the "
                    f"identifier is wrong"
                )
            pred = aug.invert(decode_grid(preds[row], canvas))
            scored.append(((task, input_hash), grid_hash(pred), pred, float(q_values[row])))
        for key, pred_hash, pred, q in scored:
            self._grids.setdefault(pred_hash, pred)
            self._votes.setdefault(key, {}).setdefault(pred_hash, []).append(q)
        self._num_predictions += len(scored)

    def _identifier(self, identifier: int) -> tuple[str, Augmentation]:
        parsed = self._parsed.get(identifier)
        if parsed is None:
            if not 0 <= identifier < len(self.identifiers):
                raise EvaluationError(
                    f"puzzle identifier {identifier} is outside identifiers.json ({len(self.identifiers)} entries)"
                )
            name = self.identifiers[identifier]
            try:
                parsed = parse_augmentation_name(name)
            except ValueError as err:
                raise EvaluationError(f"puzzle identifier {identifier}: {err}") from None
            if parsed[0] not in self._tests:
                raise EvaluationError(
                    f"puzzle identifier {identifier} ({name!r}) names task {parsed[0]!r}, which is not in test_puzzles"
                )
            self._parsed[identifier] = parsed
        return parsed

    # --- result -----------------------------------------------------------------------------
    def result(
        self, save_dir: str | Path | None = None, group: dist.ProcessGroup | None = None
    ) -> EvaluationResult | None:
        """Score the round. Under ``torch.distributed`` (initialised) every rank of ``group``
        must call this: votes are gathered to the group's rank 0, which returns the result
        and writes ``save_dir/submission.json``; other ranks return None."""
        self._round_closed = True
        gathered = _gather_to_first_rank((self._votes, self._grids, self._num_predictions), group)
        if gathered is None:
            return None
        votes, grids, num_predictions = _merge(gathered)
        if num_predictions == 0:
            raise EvaluationError(
                "no predictions to evaluate: every row was padding (blank identifier) or update() was never called"
            )
        result = self._score(votes, grids, num_predictions)
        if save_dir is not None:
            save_dir = Path(save_dir)
            save_dir.mkdir(parents=True, exist_ok=True)
            (save_dir / SUBMISSION_FILE).write_text(json.dumps(result.submission))
        return result

    def _score(self, votes: Votes, grids: dict[str, np.ndarray], num_predictions: int) -> EvaluationResult:
        per_task: dict[str, dict[int, float]] = {}
        label_ranks: dict[str, list[int | None]] = {}
        submission: dict[str, list[dict[str, list[list[int]] | None]]] = {}
        without_predictions, missing_inputs = [], []
        for task, tests in self._tests.items():
            if not any((task, test.input_hash) in votes for test in tests):
                without_predictions.append(task)
                continue
            ranks, attempts = [], []
            for index, test in enumerate(tests):
                candidates = votes.get((task, test.input_hash))
                if not candidates:
                    warnings.warn(f"task {task!r} test input {index} received no prediction; it scores 0", stacklevel=3)
                    missing_inputs.append((task, index))
                    ranks.append(None)
                    attempts.append({f"attempt_{a + 1}": None for a in range(SUBMISSION_ATTEMPTS)})
                    continue
                ranked = rank_predictions(candidates)
                ranks.append(ranked.index(test.label_hash) if test.label_hash in candidates else None)
                top = ranked[:SUBMISSION_ATTEMPTS]
                top += top[:1] * (SUBMISSION_ATTEMPTS - len(top))  # fewer answers than attempts: repeat the best
                attempts.append({f"attempt_{a + 1}": grids[h].tolist() for a, h in enumerate(top)})
            label_ranks[task] = ranks
            submission[task] = attempts
            per_task[task] = {k: sum(r is not None and r < k for r in ranks) / len(tests) for k in self.pass_ks}
        evaluated = list(per_task)
        denominator = len(evaluated) if self.denominator == "evaluated" else len(self._tests)
        metrics = {
            f"ARC/pass@{k}": math.fsum(scores[k] for scores in per_task.values()) / denominator for k in self.pass_ks
        }
        return EvaluationResult(
            metrics=metrics,
            pass_ks=self.pass_ks,
            tasks_evaluated=evaluated,
            tasks_without_predictions=without_predictions,
            test_inputs_without_predictions=missing_inputs,
            per_task=per_task,
            label_ranks=label_ranks,
            num_predictions=num_predictions,
            denominator=denominator,
            submission=submission,
        )


# --- helpers --------------------------------------------------------------------------------
def _read_test_inputs(task: str, puzzle: Mapping[str, Any]) -> list[_TestInput]:
    tests = puzzle.get("test") if isinstance(puzzle, Mapping) else None
    if not isinstance(tests, list) or not tests:
        raise EvaluationError(f"test_puzzles task {task!r} has no 'test' list of input/output pairs")
    read = []
    for index, pair in enumerate(tests):
        try:
            read.append(_TestInput(grid_hash(as_grid(pair["input"])), grid_hash(as_grid(pair["output"]))))
        except (KeyError, TypeError, ValueError) as err:
            raise EvaluationError(f"test_puzzles task {task!r} test pair {index}: {err!r}") from None
    return read


def _get(source: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in source:
        raise EvaluationError(f"{where} has no {key!r} (keys: {sorted(source)})")
    return source[key]


def _as_array(source: Mapping[str, Any], key: str, where: str) -> np.ndarray:
    value = _get(source, key, where)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _gather_to_first_rank(payload: Any, group: dist.ProcessGroup | None) -> list[Any] | None:
    """[payload of every rank] on the group's rank 0, None on the other ranks; [payload] alone."""
    if not (dist.is_available() and dist.is_initialized()):
        if group is not None:
            raise EvaluationError("a process group was given but torch.distributed is not initialised")
        return [payload]
    world_size = dist.get_world_size(group)
    if world_size == 1:
        return [payload]
    dst = dist.get_global_rank(group, 0) if group is not None else 0
    gathered = [None] * world_size if dist.get_rank(group) == 0 else None
    dist.gather_object(payload, gathered, dst=dst, group=group)
    return gathered


def _merge(payloads: Iterable[tuple[Votes, dict[str, np.ndarray], int]]) -> tuple[Votes, dict[str, np.ndarray], int]:
    votes: Votes = defaultdict(lambda: defaultdict(list))
    grids: dict[str, np.ndarray] = {}
    total = 0
    for rank_votes, rank_grids, count in payloads:
        for key, candidates in rank_votes.items():
            for pred_hash, qs in candidates.items():
                votes[key][pred_hash].extend(qs)
        grids.update(rank_grids)
        total += count
    return votes, grids, total
