"""ARC pass@K with a test-time context search (issue 37): the remedy H7's headroom points to.

For every test puzzle (each augmentation its own puzzle) the encoder's context is the start of
a search (`etrm.checks.context_search`, the one H7's headroom runs) on that puzzle's
demonstrations only, as queries; the test queries never reach it. Each puzzle's queries then
run a full evaluation episode twice, with the encoder's context and with the searched one, and
two `ArcEvaluator`s vote across augmentations and score pass@K with the honest denominator,
exactly as `etrm evaluate` does without the search.

Puzzles are taken in the dataset's test order in fixed chunks of `puzzles_per_batch`; under
torchrun chunk c goes to rank c % world_size and the evaluators gather the votes on rank 0
(as Experiment 1's evaluation is gathered). Every chunk is computed the same whatever the
number of ranks, so the totals are those of one process.

A guard stands between the search and the test queries (`query_leaks`): a search batch in
which a puzzle's test label appears, other than as one of its own demonstrations' outputs,
is an error naming the puzzle, never a score.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from etrm.checks import context_search as search
from etrm.checks.h7_probes import TaskProbe, demo_batch
from etrm.evaluation import ArcEvaluator, EvaluationError, EvaluationResult
from etrm.experiment1.distributed import Processes, gather_to_master
from etrm.inference import EVALUATOR_OUTPUT_KEYS
from etrm.interface import ProtocolError, TRMInterface
from etrm.models.loss import IGNORE_LABEL_ID

DEFAULT_PUZZLES_PER_BATCH = 8
SHOWN_KS = (1, 2)  # the table's columns (the JSON holds every K the evaluator scores)

Batch = dict[str, torch.Tensor]
# (query batch, its owners) -> (search batch, its owners): the puzzles' demonstrations as queries
SearchBatchBuilder = Callable[[Batch, torch.Tensor, int, Sequence[str]], tuple[Batch, torch.Tensor]]


@dataclass(frozen=True)
class _Puzzle:
    arrays: Any  # etrm.data.layout.SetArrays
    index: int  # the puzzle within its set
    first_query: int  # its first query row
    queries: int


def puzzles_of(dataset) -> list[_Puzzle]:
    """Every puzzle with a test query of a test-mode `FewShotPuzzleDataset`, in its order."""
    found = []
    for arrays in dataset.sets:
        starts, counts = arrays.query_ranges()
        found += [_Puzzle(arrays, p, int(starts[p]), int(counts[p])) for p in range(len(counts)) if counts[p] > 0]
    return found


def query_batch(dataset, puzzles: Sequence[_Puzzle]) -> tuple[Batch, torch.Tensor]:
    """The puzzles' test queries as `etrm evaluate` reads them (the dataset's own collation),
    and each row's position in `puzzles`."""
    parts = [
        dataset._collate(p.arrays, np.arange(p.first_query, p.first_query + p.queries), np.full(p.queries, p.index))  # noqa: SLF001
        for p in puzzles
    ]
    owners = torch.repeat_interleave(torch.arange(len(puzzles)), torch.tensor([p.queries for p in puzzles]))
    return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}, owners


def _first_rows(owners: torch.Tensor) -> list[int]:
    return [int(torch.nonzero(owners == o)[0]) for o in range(int(owners.max()) + 1)]


def _targets(raw: torch.Tensor, ignore_label_id: int | None) -> torch.Tensor:
    labels = raw.long().clone()
    if ignore_label_id is not None:
        labels[labels == ignore_label_id] = IGNORE_LABEL_ID
    return labels


def demo_search_batch(
    queries: Batch, owners: torch.Tensor, max_demos: int, names: Sequence[str], ignore_label_id: int | None = 0
) -> tuple[Batch, torch.Tensor]:
    """Each puzzle's demonstrations as queries, with all of them as demos (H7's `demo_batch`);
    the test queries are left out."""
    parts, counts = [], []
    for row in _first_rows(owners):
        mask = queries["demo_mask"][row]
        identifier = int(queries["puzzle_identifiers"][row])
        raw = queries["demo_labels"][row][mask]
        probe = TaskProbe(
            task=names[identifier] if identifier < len(names) else str(identifier),
            name=names[identifier] if identifier < len(names) else str(identifier),
            identifier=identifier,
            demo_inputs=queries["demo_inputs"][row][mask],
            demo_labels=raw,
            demo_targets=_targets(raw, ignore_label_id),
            query_input=queries["inputs"][row],
            query_label=queries["labels"][row],
        )
        parts.append(demo_batch(probe, max_demos))
        counts.append(int(mask.sum()))
    batch = {k: torch.cat([part[k] for part in parts]) for k in parts[0]}
    return batch, torch.repeat_interleave(torch.arange(len(parts)), torch.tensor(counts))


def query_leaks(
    search_batch: Batch,
    search_owners: torch.Tensor,
    queries: Batch,
    owners: torch.Tensor,
    names: Sequence[str],
    ignore_label_id: int | None = 0,
) -> list[str]:
    """Where a puzzle's test label reaches its search: a label (query label or demo slot's
    output) of the search batch equal to a test query's label that is not also one of the
    puzzle's own demonstration outputs (a demo may share the test output; that is public).
    One line per leak, naming the puzzle; empty when clean."""
    leaks = []
    for q in range(len(owners)):
        label = queries["labels"][q].long()
        if not bool((label != IGNORE_LABEL_ID).any()):
            continue
        mask = queries["demo_mask"][q]
        public = _targets(queries["demo_labels"][q][mask], ignore_label_id)
        if bool((public == label).all(-1).any()):
            continue
        mine = search_owners == owners[q]
        seen = [search_batch["labels"][mine].long()]
        slots = search_batch["demo_mask"][mine]
        seen.append(_targets(search_batch["demo_labels"][mine][slots], ignore_label_id))
        if any(bool((rows == label).all(-1).any()) for rows in seen if len(rows)):
            identifier = int(queries["puzzle_identifiers"][q])
            name = names[identifier] if identifier < len(names) else str(identifier)
            leaks.append(f"puzzle {name!r}: its test query's label is in the search batch")
    return leaks


def run_episode(model: TRMInterface, batch: Batch, contexts: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The evaluator's outputs after a full evaluation episode (`halt_max_steps` ACT steps),
    with the encoder's contexts or, given (B, P, H) `contexts`, those."""
    with model.mode(training=False), torch.no_grad():
        replaced = model.context_replaced(lambda _old: contexts) if contexts is not None else nullcontext()
        with replaced:
            carry = model.initial_carry(batch)
            for _ in range(model.halt_max_steps):
                step = model.step(carry, batch, return_keys=EVALUATOR_OUTPUT_KEYS)
                carry = step.carry
    missing = [k for k in EVALUATOR_OUTPUT_KEYS if not isinstance(step.outputs.get(k), torch.Tensor)]
    if missing:
        raise ProtocolError(f"{model.name}: a step's outputs hold no {missing} when asked with return_keys")
    if not bool(torch.as_tensor(step.all_finish).all()):
        raise RuntimeError(
            f"{model.name}: after halt_max_steps={model.halt_max_steps} evaluation steps some samples have not "
            "halted: the model's evaluation-mode halting is broken"
        )
    return {k: step.outputs[k].detach().cpu() for k in EVALUATOR_OUTPUT_KEYS}


def _exact_rows(outputs: dict[str, torch.Tensor], batch: Batch) -> int:
    labels = batch["labels"]
    valid = labels != IGNORE_LABEL_ID
    return int((((outputs["preds"] == labels) | ~valid).all(-1) & valid.any(-1)).sum())


@dataclass
class SearchEvaluation:
    """pass@K with the encoder's contexts and the searched ones, and what the search cost."""

    encoder: EvaluationResult
    searched: EvaluationResult
    steps: int
    puzzles: int
    search_seconds: float  # summed over puzzles (and ranks)
    episode_seconds: float  # both episodes, summed the same way
    lowered: int  # puzzles whose search lowered the demonstrations' loss
    demo_loss: tuple[float, float]  # the demonstrations' first-step loss, mean over puzzles: at the start, searched
    exact_rows: tuple[int, int]  # test-query rows answered exactly (before voting): encoder's contexts, searched
    rows: int
    scale: float | None
    scale_source: str
    world_size: int = 1
    shown_ks: tuple[int, ...] = field(default=SHOWN_KS)

    @property
    def seconds_per_puzzle(self) -> float:
        return self.search_seconds / max(1, self.puzzles)

    def to_json(self) -> dict[str, Any]:
        def scores(result: EvaluationResult) -> dict[str, float]:
            return {f"pass@{k}": result.metrics[f"ARC/pass@{k}"] for k in result.pass_ks}

        return {
            "encoder": scores(self.encoder),
            "searched": scores(self.searched),
            "seconds_per_puzzle": self.seconds_per_puzzle,
            "episode_seconds_per_puzzle": self.episode_seconds / max(1, self.puzzles),
            "steps": self.steps,
            "puzzles": self.puzzles,
            "puzzles_search_lowered": self.lowered,
            "demo_loss_start": self.demo_loss[0],
            "demo_loss_searched": self.demo_loss[1],
            "exact_rows_encoder": self.exact_rows[0],
            "exact_rows_searched": self.exact_rows[1],
            "rows": self.rows,
            "tasks_evaluated": len(self.searched.tasks_evaluated),
            "denominator": self.searched.denominator,
            "search_scale": self.scale,
            "search_scale_source": self.scale_source,
            "world_size": self.world_size,
            "per_task": {
                task: {
                    "encoder": {f"pass@{k}": v for k, v in self.encoder.per_task[task].items()},
                    "searched": {f"pass@{k}": v for k, v in self.searched.per_task[task].items()},
                }
                for task in self.searched.tasks_evaluated
            },
        }

    def table(self) -> str:
        ks = [k for k in self.shown_ks if k in self.searched.pass_ks]
        head = [f"encoder pass@{k}" for k in ks] + [f"searched pass@{k}" for k in ks]
        width = max(len("total"), *(len(t) for t in self.searched.tasks_evaluated))
        lines = [
            f"ARC evaluation with a context search: {self.steps} steps per puzzle on its demonstrations, "
            f"{self.puzzles} puzzles, {len(self.searched.tasks_evaluated)} tasks, metric averaged over "
            f"{self.searched.denominator} tasks",
            "  " + "task".ljust(width) + "  " + "  ".join(head),
        ]

        def row(name: str, enc: dict, found: dict) -> str:
            cells = [enc[k] for k in ks] + [found[k] for k in ks]
            return "  " + name.ljust(width) + "  " + "  ".join(f"{v:.4f}".rjust(len(h)) for v, h in zip(cells, head))

        for task in self.searched.tasks_evaluated:
            lines.append(row(task, self.encoder.per_task[task], self.searched.per_task[task]))
        total = {
            r: {k: res.metrics[f"ARC/pass@{k}"] for k in ks} for r, res in (("e", self.encoder), ("s", self.searched))
        }
        lines.append(row("total", total["e"], total["s"]))
        lines.append(
            f"search: {self.seconds_per_puzzle:.3g} s per puzzle ({self.steps} steps, step "
            f"{search.STEP_FRACTION:g} x {self.scale if self.scale is not None else float('nan'):.3g} from "
            f"{self.scale_source}); it lowered the demonstrations' loss on {self.lowered} of {self.puzzles} puzzles "
            f"(mean {self.demo_loss[0]:.4g} -> {self.demo_loss[1]:.4g}); test queries answered exactly before voting: "
            f"{self.exact_rows[0]} -> {self.exact_rows[1]} of {self.rows}"
        )
        if self.searched.tasks_without_predictions:
            lines.append(
                f"{len(self.searched.tasks_without_predictions)} tasks without predictions (left out of the "
                f"metric): {', '.join(self.searched.tasks_without_predictions)}"
            )
        return "\n".join(lines)


def evaluate_with_search(
    model: TRMInterface,
    data_dir: str | Path,
    steps: int,
    *,
    max_demos: int,
    max_groups: int | None = None,
    puzzles_per_batch: int = DEFAULT_PUZZLES_PER_BATCH,
    seed: int = 0,
    processes: Processes | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    search_batch: SearchBatchBuilder | None = None,
) -> SearchEvaluation | None:
    """Score `model` on the test split of `data_dir` with the encoder's contexts and with contexts
    searched for `steps` steps on each puzzle's demonstrations. Returns the evaluation on rank 0,
    None on the others. `search_batch` builds the search's inputs (default: `demo_search_batch`;
    a test swaps in a leaking one to show the guard catches it)."""
    from etrm.data.datasets import FewShotPuzzleDataset, load_identifiers

    processes = processes or Processes(0, 1, torch.device(device))
    if model.missing("encoder"):
        raise ProtocolError(f"no context to search: {model.missing('encoder')}")
    dataset = FewShotPuzzleDataset(data_dir, "test", 1, max_demos=max_demos, test_mode=True, max_groups=max_groups)
    names = load_identifiers(data_dir)
    ignore = dataset.metadata.ignore_label_id
    build = search_batch or (lambda q, o, d, n: demo_search_batch(q, o, d, n, ignore))
    puzzles = puzzles_of(dataset)
    chunks = [puzzles[i : i + puzzles_per_batch] for i in range(0, len(puzzles), puzzles_per_batch)]

    def prepared(chunk):
        queries, owners = query_batch(dataset, chunk)
        found, found_owners = build(queries, owners, max_demos, names)
        if leaks := query_leaks(found, found_owners, queries, owners, names, ignore):
            raise EvaluationError(f"the context search would see a test label: {leaks[0]} ({len(leaks)} in all)")
        to = lambda b: {k: v.to(processes.device) for k, v in b.items()}  # noqa: E731
        found = to(found)
        starts = model.first_context(found)[_first_rows(found_owners)]
        return queries, to(queries), owners, found, found_owners, starts

    if chunks and not model.context_rms:  # the same first chunk on every rank: the same scale
        scale = search.search_scale(model, contexts=prepared(chunks[0])[-1])
    else:
        scale = search.search_scale(model)
    evaluators = {"encoder": ArcEvaluator.from_data_dir(data_dir), "searched": ArcEvaluator.from_data_dir(data_dir)}
    for evaluator in evaluators.values():
        evaluator.begin_round()
    mine = chunks[processes.rank :: processes.world_size]
    bar = tqdm(
        total=sum(map(len, mine)), desc="context search", unit="puzzle", disable=not (progress and processes.master)
    )
    search_s = episode_s = loss_start = loss_searched = 0.0
    lowered = exact_encoder = exact_searched = rows = 0
    for chunk in mine:
        cpu_queries, queries, owners, found, found_owners, starts = prepared(chunk)
        if not rows:  # Adam's one-time import (torch._dynamo, ~1.5 s) is no puzzle's cost
            torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))])
        result = search.search_contexts(model, found, starts, found_owners.to(processes.device), steps, scale, seed)
        search_s += result.seconds
        lowered += sum(result.lowered)
        loss_start, loss_searched = loss_start + sum(result.start_loss), loss_searched + sum(result.searched_loss)
        started = time.perf_counter()
        with_encoder = run_episode(model, queries)
        with_searched = run_episode(model, queries, result.contexts[owners.to(result.contexts.device)])
        episode_s += time.perf_counter() - started
        evaluators["encoder"].update(cpu_queries, with_encoder)
        evaluators["searched"].update(cpu_queries, with_searched)
        exact_encoder += _exact_rows(with_encoder, cpu_queries)
        exact_searched += _exact_rows(with_searched, cpu_queries)
        rows += len(owners)
        bar.update(len(chunk))
    bar.close()
    mine_totals = (search_s, episode_s, lowered, loss_start, loss_searched, exact_encoder, exact_searched, rows)
    totals = (
        [sum(t[i] for t in ranks) for i in range(8)] if (ranks := gather_to_master(mine_totals, processes)) else None
    )
    results = {name: evaluator.result() for name, evaluator in evaluators.items()}  # gathered on rank 0
    if not processes.master:
        return None
    return SearchEvaluation(
        results["encoder"],
        results["searched"],
        steps if scale is not None else 0,
        len(puzzles),
        totals[0],
        totals[1],
        totals[2],
        (totals[3] / max(1, len(puzzles)), totals[4] / max(1, len(puzzles))),
        (totals[5], totals[6]),
        totals[7],
        scale.rms if scale is not None else None,
        scale.source if scale is not None else "no scale found: the search took no step",
        processes.world_size,
    )


def record_fields(evaluation: SearchEvaluation) -> dict[str, float | int]:
    """The metrics-log fields of a search evaluation, beside an evaluation record's `eval/*`:
    `eval/searched/ARC/pass@K` (a curve on the accuracy plot) and the search's `search/*` numbers;
    no seconds, so a resumed or repeated run logs the same lines."""
    fields: dict[str, float | int] = {f"eval/searched/{k}": float(v) for k, v in evaluation.searched.metrics.items()}
    fields.update(
        {
            "search/steps": evaluation.steps,
            "search/puzzles": evaluation.puzzles,
            "search/puzzles_lowered": evaluation.lowered,
            "search/demo_loss_start": evaluation.demo_loss[0],
            "search/demo_loss_searched": evaluation.demo_loss[1],
        }
    )
    return fields
