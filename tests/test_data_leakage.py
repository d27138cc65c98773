"""Leakage report on built datasets: clean few-shot builds, the intended overlap of trm
builds, and an evaluation example planted in the train split (the negative control)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from etrm.data import fixture_data_dir
from etrm.data.build import leakage_report  # part of the builder's API
from etrm.data.grids import Augmentation, augmentation_name, decode_grid, encode_grid
from etrm.suite.broken import plant_in_train_split as plant

EVAL_TASKS = ["00576224", "03560426", "0692e18c", "da2b0fe3"]


@pytest.fixture
def fewshot_copy(tmp_path) -> Path:
    return Path(shutil.copytree(fixture_data_dir("fewshot"), tmp_path / "fewshot"))


def eval_query(task_id: str) -> tuple[np.ndarray, np.ndarray]:
    task = json.loads((fixture_data_dir("fewshot") / "test_puzzles.json").read_text())[task_id]
    return np.array(task["test"][0]["input"]), np.array(task["test"][0]["output"])


def test_fewshot_build_is_clean():
    report = leakage_report(fixture_data_dir("fewshot"))
    assert report.is_clean and report.leaks == [] and report.unhashed_rows == 0
    assert "no leaks" in report.summary()


def test_trm_build_shares_every_evaluation_task_by_design():
    report = leakage_report(fixture_data_dir("trm"))
    assert [leak.task_id for leak in report.leaks] == EVAL_TASKS
    assert all(len(leak.train_names) == 4 for leak in report.leaks)  # original + 3 augmentations (demos)
    assert "LEAKS: 4 task(s)" in report.summary()


def test_one_planted_evaluation_example_is_caught(fewshot_copy):
    inp, out = eval_query("0692e18c")
    plant(fewshot_copy, "0692e18c", encode_grid(inp, canvas=10), encode_grid(out, canvas=10))
    report = leakage_report(fewshot_copy)
    assert [leak.task_id for leak in report.leaks] == ["0692e18c"]
    leak = report.leaks[0]
    assert leak.train_names == ("0692e18c",)
    assert {o.kind for o in leak.overlaps} == {"grid", "pair"}
    assert all(o.is_leak and "0692e18c" in o.test_tasks for o in leak.overlaps)
    assert "0692e18c: 1 train puzzle(s)" in report.summary()


def test_an_augmented_translated_copy_is_recognised_through_its_name(fewshot_copy):
    inp, out = eval_query("00576224")
    aug = Augmentation(6, (0, 9, 8, 7, 6, 5, 4, 3, 2, 1))
    name = augmentation_name("00576224", aug)
    assert name not in json.loads((fewshot_copy / "identifiers.json").read_text())  # content found nowhere as is
    moved_in = encode_grid(aug.apply(inp), canvas=10, offset=(3, 2))
    moved_out = encode_grid(aug.apply(out), canvas=10, offset=(3, 2))
    assert not np.array_equal(decode_grid(moved_in, offset=(3, 2)), inp)  # the content really differs
    plant(fewshot_copy, name, moved_in, moved_out)
    report = leakage_report(fewshot_copy)
    assert [leak.task_id for leak in report.leaks] == ["00576224"]
    assert any(o.kind == "pair" for o in report.leaks[0].overlaps)


def test_same_content_under_another_task_is_a_coincidence_not_a_leak(fewshot_copy):
    inp, out = eval_query("03560426")
    plant(fewshot_copy, "017c7c7b", encode_grid(inp, canvas=10), encode_grid(out, canvas=10))
    report = leakage_report(fewshot_copy)
    assert report.leaks == []
    pairs = report.of_kind("pair")
    assert len(pairs) == 1 and not pairs[0].is_leak
    assert pairs[0].train_tasks == ("017c7c7b",) and "03560426" in pairs[0].test_tasks
    assert "1 pair(s)" in report.summary() and "017c7c7b" in report.summary()


@pytest.mark.slow
def test_full_arc1_build_shows_exactly_the_source_overlaps(tmp_path):
    """Undoing augmentations makes a built dataset's overlaps those of the raw source."""
    from etrm.data.build import build_dataset
    from etrm.data.leakage import source_overlap_report
    from etrm.data.sources import load_tasks

    built = leakage_report(build_dataset(tmp_path / "full", num_aug=2, progress=False))
    raw = source_overlap_report(load_tasks())
    assert built.is_clean
    assert [(o.kind, o.digest, o.train_tasks, o.test_tasks) for o in built.overlaps] == [
        (o.kind, o.digest, o.train_tasks, o.test_tasks) for o in raw.overlaps
    ]
