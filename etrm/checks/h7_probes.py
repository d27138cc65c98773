"""What the H7 measurements run on: one task's demonstrations and test query, scored with a
chosen context through `TRMInterface.context_replaced`, and a free context searched on the
demonstrations (`etrm.checks.context_search`, the test-time latent search of Latent Program
Networks, used as a probe).

Scores are those of an evaluation episode (`halt_max_steps` ACT steps, as the official
evaluator runs it, or its first `act_steps`): the last step's stablemax cross-entropy, mean
over the query's labelled tokens (the official loss head's `lm_loss` for one sample), and
exact match.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from etrm.checks import context_search as search
from etrm.interface import TRMInterface
from etrm.models.loss import IGNORE_LABEL_ID


@dataclass(frozen=True)
class TaskProbe:
    """One puzzle of a task: its demonstrations (raw tokens) and its first test query."""

    task: str  # base task id
    name: str  # the puzzle's identifier name (`task` for the un-augmented original)
    identifier: int
    demo_inputs: torch.Tensor  # (D, S)
    demo_labels: torch.Tensor  # (D, S) raw tokens, as the encoder reads them
    demo_targets: torch.Tensor  # (D, S) the demo outputs as query labels (-100 ignored)
    query_input: torch.Tensor  # (S,)
    query_label: torch.Tensor  # (S,) -100 ignored


def load_task_probes(
    data_dir: str | Path, split: str, *, num_tasks: int | None, max_demos: int, seed: int = 0, per_task: int = 1
) -> list[TaskProbe]:
    """`per_task` puzzles (the original first, then augmentations) of `num_tasks` tasks of a
    few-shot build's split, the tasks drawn with `seed` (all of them for None); task order
    follows the draw, puzzles of one task are adjacent."""
    from etrm.data.grids import parse_augmentation_name
    from etrm.data.layout import DatasetFormatError, load_identifiers, load_split

    metadata, sets = load_split(data_dir, split)
    names = load_identifiers(data_dir)
    groups: dict[str, list[tuple]] = {}
    for arrays in sets:
        if arrays.num_demos is None:
            raise DatasetFormatError(
                f"{Path(data_dir) / split}: not a few-shot build (no num_demos): the H7 "
                "measurements need each puzzle's demonstrations"
            )
        for group in range(arrays.num_groups):
            for puzzle in range(int(arrays.group_indices[group]), int(arrays.group_indices[group + 1])):
                identifier = int(arrays.puzzle_identifiers[puzzle])
                name = names[identifier] if identifier < len(names) else str(identifier)
                groups.setdefault(parse_augmentation_name(name)[0], []).append((arrays, puzzle, identifier, name))
    tasks = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(tasks))
    chosen = [tasks[i] for i in order[: len(tasks) if num_tasks is None else num_tasks]]
    probes = []
    for task in chosen:
        puzzles = sorted(groups[task], key=lambda p: "|||" in p[3])  # the original first (a stable sort)
        for arrays, puzzle, identifier, name in puzzles[:per_task]:
            start, demos = int(arrays.puzzle_indices[puzzle]), int(arrays.num_demos[puzzle])
            if int(arrays.puzzle_indices[puzzle + 1]) - start <= demos or demos < 1:
                continue  # no query or no demonstration: nothing to score
            used = min(demos, max_demos)
            rows = slice(start, start + used)
            probes.append(
                TaskProbe(
                    task,
                    name,
                    identifier,
                    _tokens(arrays.inputs[rows]),
                    _tokens(arrays.labels[rows]),
                    _targets(arrays.labels[rows], metadata.ignore_label_id),
                    _tokens(arrays.inputs[start + demos]),
                    _targets(arrays.labels[start + demos], metadata.ignore_label_id),
                )
            )
    if not probes:
        raise DatasetFormatError(f"{Path(data_dir) / split}: no puzzle with demonstrations and a test query")
    return probes


def _tokens(rows: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(rows, dtype=np.int32))


def _targets(rows: np.ndarray, ignore_label_id: int | None) -> torch.Tensor:
    labels = np.asarray(rows, dtype=np.int64).copy()
    if ignore_label_id is not None:
        labels[labels == ignore_label_id] = IGNORE_LABEL_ID
    return torch.from_numpy(labels)


def probe_batch(
    probe: TaskProbe, inputs: torch.Tensor, labels: torch.Tensor, max_demos: int, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """A batch of queries `inputs`/`labels` (B, S), each with all of the probe's demonstrations."""
    b, (d, s) = inputs.shape[0], probe.demo_inputs.shape
    demo_inputs = torch.zeros(b, max_demos, s, dtype=torch.int32)
    demo_labels = torch.zeros_like(demo_inputs)
    demo_inputs[:, :d], demo_labels[:, :d] = probe.demo_inputs, probe.demo_labels
    mask = torch.zeros(b, max_demos, dtype=torch.bool)
    mask[:, :d] = True
    batch = {
        "inputs": inputs.to(torch.int32),
        "labels": labels.long(),
        "puzzle_identifiers": torch.full((b,), probe.identifier, dtype=torch.int32),
        "demo_inputs": demo_inputs,
        "demo_labels": demo_labels,
        "demo_mask": mask,
    }
    return {k: v.to(device) for k, v in batch.items()}


def query_batch(
    probes: Sequence[TaskProbe], max_demos: int, copies: int = 1, device: str | torch.device = "cpu"
) -> dict[str, torch.Tensor]:
    """Each probe's test query (`copies` times, adjacent) with its own demonstrations."""
    parts = [
        probe_batch(p, p.query_input.expand(copies, -1), p.query_label.expand(copies, -1), max_demos, device)
        for p in probes
    ]
    return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}


def demo_batch(
    probe: TaskProbe, max_demos: int, device: str | torch.device = "cpu", queries: int | None = None
) -> dict[str, torch.Tensor]:
    """The first `queries` demonstrations (all for None) as queries, the test query left out;
    all demonstrations as demos."""
    rows = slice(None, queries)
    return probe_batch(probe, probe.demo_inputs[rows], probe.demo_targets[rows], max_demos, device)


def episode_scores(
    model: TRMInterface,
    batch: dict[str, torch.Tensor],
    contexts: torch.Tensor | None = None,
    act_steps: int | None = None,
    vocab: list | None = None,
) -> tuple[list[float], list[bool]]:
    """(loss, exact match) per sample after an evaluation episode (its first `act_steps` ACT
    steps if given), with the encoder's own contexts or, given `contexts` (B, P, H), those."""
    labels = batch["labels"]
    with model.mode(training=False), torch.no_grad():
        replaced = model.context_replaced(lambda _: contexts) if contexts is not None else nullcontext()
        with replaced:
            carry = model.initial_carry(batch)
            for _ in range(min(act_steps or model.halt_max_steps, model.halt_max_steps)):
                step = model.step(carry, batch, return_keys=("logits",))
                carry = step.carry
    logits = search.step_logits(step, labels, model.name)
    if vocab is not None:  # the caller's list receives the logits' vocabulary size
        vocab.append(int(logits.shape[-1]))
    return search.sample_losses(logits, labels)


def chance_loss(vocab: int) -> float:
    """ln(vocab): the loss of uniform logits, what an untrained decoder scores."""
    return math.log(vocab)


def optimise_context(
    model: TRMInterface,
    probe: TaskProbe,
    start: torch.Tensor,
    steps: int,
    max_demos: int,
    scale: search.SearchScale | None,
    device: str | torch.device = "cpu",
    seed: int = 0,
    queries: int | None = None,
) -> search.SearchResult:
    """One task's free context (1, P, H), started at `start`, searched (`etrm.checks.context_search`)
    on its first `queries` demonstrations as queries (all for None), all of them as demos."""
    batch = demo_batch(probe, max_demos, device, queries)
    owners = torch.zeros(batch["inputs"].shape[0], dtype=torch.long)
    return search.search_contexts(model, batch, start.unsqueeze(0), owners, steps, scale, seed)
