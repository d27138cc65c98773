"""`task_balanced_batch`, the H7 checkpoint checks' batch: a few augmentations of each of
several tasks, wherever they sit in the split (an official build's first thousand rows
are one task's augmentations)."""

from __future__ import annotations

import collections

import pytest

from etrm.bundled import fixtures_root
from etrm.config import tiny_config
from etrm.suite.support import task_balanced_batch

FEWSHOT = fixtures_root() / "interop" / "origin" / "fewshot"  # 8 evaluation tasks x 9 puzzles, seq 900
CONFIG = tiny_config("etrm", seq_len=900, max_demos=3)


def test_two_augmentations_of_each_of_four_tasks():
    batch, tasks = task_balanced_batch(FEWSHOT, CONFIG, per_task=2, num_tasks=4)
    assert collections.Counter(tasks) == {task: 2 for task in dict.fromkeys(tasks)} and len(set(tasks)) == 4
    assert batch["inputs"].shape == (8, 900) and batch["demo_inputs"].shape[:2] == (8, 3)
    assert len(set(batch["puzzle_identifiers"].tolist())) == 8  # distinct augmentations, no blank padding rows


def test_a_split_with_fewer_tasks_gives_what_it_has():
    _, tasks = task_balanced_batch(FEWSHOT, CONFIG, per_task=1, num_tasks=50)
    assert len(tasks) == len(set(tasks)) == 8  # every task once, then the split ran out


def test_a_dataset_of_another_canvas_is_refused_naming_both_lengths():
    with pytest.raises(ValueError, match="sequences of 900 tokens, but the model expects seq_len 100"):
        task_balanced_batch(FEWSHOT, tiny_config("etrm", seq_len=100))
