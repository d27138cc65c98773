"""Hypothesis 5: is the dataset right? (FewShotPuzzleDataset vs PuzzleDataset)

Checks take built dataset folders and dataset objects, so the same functions run on the
bundled fixtures, on a user's build, and on deliberately broken dataset variants.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from etrm.checks.result import CheckResult
from etrm.data.grids import IGNORE_LABEL_ID, PAD_ID

H = "hypothesis5"


def _batches(dataset) -> list[dict[str, torch.Tensor]]:
    return list(iter(dataset))


def check_no_evaluation_leakage(data_dir: Path) -> CheckResult:
    """No example of an evaluation task sits in the train split (by name or content);
    content shared by *different* tasks (ARC-AGI-1 has some) is reported, not failed."""
    from etrm.data.leakage import leakage_report

    report = leakage_report(data_dir, progress=False)
    leaks = report.leaks
    coincidences = len(report.coincidences)
    message = (
        (
            f"no evaluation example in the train split; {coincidences} grid/pair overlap(s) between "
            f"different tasks (ARC-AGI-1's own)"
        )
        if not leaks
        else (
            f"{len(leaks)} evaluation task(s) leak into the train split: "
            + "; ".join(f"{leak.task_id} via {', '.join(leak.train_names[:3])}" for leak in leaks[:5])
            + " (the official TRM builder does this by design, to learn their puzzle embeddings: a few-shot "
            "claim on such a build is not few-shot)"
        )
    )
    return CheckResult.from_condition(
        H, "no_evaluation_leakage", not leaks, message, {"leaking_tasks": len(leaks), "coincidences": coincidences}
    )


def check_fewshot_agrees_with_puzzle_dataset(fewshot, puzzle) -> CheckResult:
    """In test iteration both datasets yield the same queries: inputs, labels, identifiers."""
    a, b = _batches(fewshot), _batches(puzzle)
    rows_a, rows_b = sum(len(x["inputs"]) for x in a), sum(len(x["inputs"]) for x in b)
    differing = {}
    if rows_a == rows_b:
        for key in ("inputs", "labels", "puzzle_identifiers"):
            left, right = torch.cat([x[key] for x in a]), torch.cat([x[key] for x in b])
            n = int((left != right).reshape(len(left), -1).any(-1).sum())
            if n:
                differing[key] = n
    ok = rows_a == rows_b and not differing
    message = (
        f"{rows_a} query rows, identical inputs, labels and identifiers in both datasets"
        if ok
        else f"few-shot dataset yields {rows_a} rows, puzzle dataset {rows_b}; rows differing per key: {differing}"
    )
    return CheckResult.from_condition(
        H,
        "fewshot_agrees_with_puzzle_dataset",
        ok,
        message,
        {"rows_fewshot": rows_a, "rows_puzzle": rows_b, "rows_differing": sum(differing.values())},
    )


def check_queries_not_among_demos(fewshot) -> CheckResult:
    """No query (input and output) appears among its own demonstrations."""
    hits, rows = [], 0
    for batch in _batches(fewshot):
        labels = torch.where(batch["labels"] == IGNORE_LABEL_ID, PAD_ID, batch["labels"]).to(batch["demo_labels"].dtype)
        same = (
            (batch["demo_inputs"] == batch["inputs"][:, None]).all(-1)
            & (batch["demo_labels"] == labels[:, None]).all(-1)
            & batch["demo_mask"]
        )
        real = batch["puzzle_identifiers"] != 0
        rows += int(real.sum())
        hits += batch["puzzle_identifiers"][same.any(-1) & real].tolist()
    return CheckResult.from_condition(
        H,
        "queries_not_among_demos",
        not hits,
        f"{len(hits)} of {rows} queries appear among their own demos" + (f" (identifiers {hits[:5]})" if hits else ""),
        {"queries": rows, "queries_in_demos": len(hits)},
    )


def check_demo_masks(fewshot, data_dir: Path) -> CheckResult:
    """Each query's mask marks exactly min(num_demos, max_demos) slots, read independently
    from the build's arrays; masked-out slots are all PAD and valid ones are not."""
    from etrm.data.layout import load_split

    _, sets = load_split(data_dir, fewshot.split)
    demos_of = {}
    for arrays in sets:
        for ident, n in zip(arrays.puzzle_identifiers, arrays.num_demos):
            demos_of.setdefault(int(ident), int(n))
    wrong_count = dirty_padding = empty_valid = rows = 0
    for batch in _batches(fewshot):
        for ident, mask, demos in zip(batch["puzzle_identifiers"].tolist(), batch["demo_mask"], batch["demo_inputs"]):
            expected = min(demos_of.get(ident, 0), fewshot.max_demos) if ident != 0 else 0
            rows += 1
            wrong_count += int(int(mask.sum()) != expected or not bool(mask[:expected].all()))
            dirty_padding += int((demos[~mask] != PAD_ID).any())
            empty_valid += int((demos[mask] == PAD_ID).all(-1).any())
    bad = wrong_count + dirty_padding + empty_valid
    return CheckResult.from_condition(
        H,
        "demo_masks",
        bad == 0,
        f"{rows} rows: {wrong_count} with a wrong number of valid demo slots, {dirty_padding} with content in "
        f"masked slots, {empty_valid} with an empty slot marked valid",
        {"rows": rows, "wrong_count": wrong_count, "dirty_padding": dirty_padding, "empty_valid": empty_valid},
    )


def check_augmentation_round_trip(augment=None, invert=None) -> CheckResult:
    """inverse(augment(grid)) == grid for all 8 dihedral transforms x colour permutations."""
    from etrm.data import grids

    kwargs = {k: v for k, v in (("augment", augment), ("invert", invert)) if v is not None}
    failures = grids.check_augmentation_round_trip(**kwargs)
    return CheckResult.from_condition(
        H,
        "augmentation_round_trip",
        not failures,
        f"{len(failures)} failing round trips"
        + (f", e.g. {failures[0]}" if failures else " over 8 transforms x 3 colour maps on asymmetric grids"),
        {"failures": len(failures)},
    )


def check_max_groups_limits_whole_tasks(
    make_dataset: Callable[..., object], data_dir: Path, max_groups: int = 2
) -> CheckResult:
    """`max_groups=N` keeps every augmentation of the first N tasks and nothing else."""
    from etrm.data.grids import parse_augmentation_name
    from etrm.data.layout import load_identifiers, load_split

    names = load_identifiers(data_dir)
    _, sets = load_split(data_dir, "test")
    arrays = sets[0]
    first = arrays.puzzle_identifiers[: int(arrays.group_indices[max_groups])]
    expected = {int(i) for i, n in zip(first, arrays.query_ranges()[1][: len(first)]) if n > 0}
    seen = {int(i) for b in _batches(make_dataset(max_groups=max_groups)) for i in b["puzzle_identifiers"] if i != 0}
    tasks = sorted({parse_augmentation_name(names[i])[0] for i in seen})
    ok = seen == expected
    return CheckResult.from_condition(
        H,
        "max_groups_limits_whole_tasks",
        ok,
        f"max_groups={max_groups} yields {len(seen)} puzzles of tasks {tasks}; the first {max_groups} groups hold "
        f"{len(expected)} puzzles with queries"
        + ("" if ok else f"; missing {sorted(expected - seen)[:5]}, extra {sorted(seen - expected)[:5]}"),
        {"puzzles_seen": len(seen), "puzzles_expected": len(expected), "tasks": len(tasks)},
    )


def check_rank_sharding(make_dataset: Callable[..., object], world_size: int = 2) -> CheckResult:
    """Training batches of `world_size` ranks, put side by side, are the single-process
    batches: no row lost, none duplicated, same order for the same seed."""
    single = _batches(make_dataset(rank=0, world_size=1))
    shards = [_batches(make_dataset(rank=r, world_size=world_size)) for r in range(world_size)]
    same_count = all(len(s) == len(single) for s in shards)
    mismatched = 0
    if same_count:
        for i, batch in enumerate(single):
            joined = torch.cat([s[i]["inputs"] for s in shards])
            mismatched += int(not torch.equal(joined, batch["inputs"]))
    ok = same_count and mismatched == 0 and len(single) > 0
    return CheckResult.from_condition(
        H,
        "rank_sharding",
        ok,
        f"{len(single)} global batches; {world_size} ranks yield {[len(s) for s in shards]} batches, "
        f"{mismatched} of which differ from the single-process rows when joined",
        {"batches": len(single), "mismatched": mismatched, "world_size": world_size},
    )


def check_padding_rows(fewshot) -> CheckResult:
    """Padding rows carry the blank identifier, only ignored labels and no valid demo."""
    bad = padding = 0
    for batch in _batches(fewshot):
        blank = batch["puzzle_identifiers"] == 0
        padding += int(blank.sum())
        bad += int((blank & ((batch["labels"] != IGNORE_LABEL_ID).any(-1) | batch["demo_mask"].any(-1))).sum())
    if padding == 0:
        return CheckResult.inconclusive(
            H,
            "padding_rows",
            "the test iteration has no padding row (the batch size divides the query count); nothing to check",
            {"padding_rows": 0},
        )
    return CheckResult.from_condition(
        H,
        "padding_rows",
        bad == 0,
        f"{padding} padding rows, {bad} with labels or demos that count",
        {"padding_rows": padding, "bad": bad},
    )
