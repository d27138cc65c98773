"""H5: is the dataset right? (investigation Test 5.1; DESIGN.md section 8)"""

from __future__ import annotations

import functools

import pytest

from etrm.checks import h5_dataset as h5
from etrm.data.datasets import FewShotPuzzleDataset, PuzzleDataset
from etrm.suite import broken

pytestmark = pytest.mark.hypothesis5

BATCH = 7  # prime, so a test iteration usually ends in a padded batch


@pytest.fixture(scope="module")
def data_dir(artifacts):
    return artifacts.require("data_dir")


@pytest.fixture(scope="module")
def fewshot_dir(data_dir):
    """The dataset, for checks of the few-shot pipeline: a TRM-layout build (the official
    builder's) has no demos, so those checks cannot decide on it."""
    if not any((data_dir / "test").glob("*__num_demos.npy")):
        pytest.skip(
            f"{data_dir} is a TRM-layout build (no <set>__num_demos.npy): the few-shot dataset checks "
            "need a few-shot build (etrm build-data --mode fewshot, or the origin's encoder builder)"
        )
    return data_dir


def fewshot(data_dir, cls=FewShotPuzzleDataset, **kwargs):
    return cls(
        data_dir,
        kwargs.pop("split", "test"),
        kwargs.pop("batch_size", BATCH),
        test_mode=kwargs.pop("test_mode", True),
        **kwargs,
    )


def training_factory(data_dir, cls=FewShotPuzzleDataset):
    return functools.partial(cls, data_dir, "train", 4, seed=3, epochs=2)


def test_no_evaluation_example_in_the_train_split(data_dir, record_check):
    record_check(h5.check_no_evaluation_leakage(data_dir))


def test_fewshot_and_puzzle_datasets_agree_on_queries(fewshot_dir, record_check):
    record_check(
        h5.check_fewshot_agrees_with_puzzle_dataset(
            fewshot(fewshot_dir), PuzzleDataset(fewshot_dir, "test", BATCH, test_mode=True)
        )
    )


@pytest.mark.parametrize("split", ["train", "test"])
def test_no_query_among_its_own_demos(fewshot_dir, split, record_check):
    record_check(h5.check_queries_not_among_demos(fewshot(fewshot_dir, split=split)))


@pytest.mark.parametrize("max_demos", [2, 10])
def test_demo_masks_match_the_build(fewshot_dir, max_demos, record_check):
    record_check(h5.check_demo_masks(fewshot(fewshot_dir, max_demos=max_demos), fewshot_dir))


@pytest.mark.etrm_self_test
def test_augmentations_round_trip(record_check):
    record_check(h5.check_augmentation_round_trip())


def test_max_groups_limits_whole_tasks(fewshot_dir, record_check):
    record_check(h5.check_max_groups_limits_whole_tasks(functools.partial(fewshot, fewshot_dir), fewshot_dir))


def test_rank_sharding_splits_global_batches(fewshot_dir, record_check):
    record_check(h5.check_rank_sharding(training_factory(fewshot_dir)))


def test_padding_rows_are_ignored(fewshot_dir, record_check):
    record_check(h5.check_padding_rows(fewshot(fewshot_dir)))


# --- negative controls ---------------------------------------------------------------------


def test_control_planted_evaluation_example_is_caught(data_dir, tmp_path, expect_check_fails):
    leaked = broken.plant_evaluation_example(data_dir, tmp_path / "leaked")
    expect_check_fails(h5.check_no_evaluation_leakage(leaked))


def test_control_demo_rows_served_as_queries_are_caught(fewshot_dir, expect_check_fails):
    bad = fewshot(fewshot_dir, broken.DemoAsQueryDataset)
    expect_check_fails(h5.check_queries_not_among_demos(bad))
    expect_check_fails(
        h5.check_fewshot_agrees_with_puzzle_dataset(bad, PuzzleDataset(fewshot_dir, "test", BATCH, test_mode=True))
    )


def test_control_all_ones_demo_mask_is_caught(fewshot_dir, expect_check_fails):
    expect_check_fails(h5.check_demo_masks(fewshot(fewshot_dir, broken.FullMaskDataset), fewshot_dir))


def test_control_wrong_inverse_for_one_transform_is_caught(expect_check_fails):
    from etrm.data.grids import dihedral_transform

    def invert(grid, aug):  # treats rot90 k=1 as its own inverse
        return (
            aug.invert(grid)
            if aug.transform_id != 1
            else aug.invert(dihedral_transform(dihedral_transform(grid, 1), 1))
        )

    expect_check_fails(h5.check_augmentation_round_trip(invert=invert))


def test_control_max_groups_counting_augmentations_is_caught(fewshot_dir, expect_check_fails):
    make = functools.partial(fewshot, fewshot_dir, broken.PuzzleLimitedDataset)
    expect_check_fails(h5.check_max_groups_limits_whole_tasks(make, fewshot_dir))


def test_control_unsharded_ranks_are_caught(fewshot_dir, expect_check_fails):
    expect_check_fails(h5.check_rank_sharding(training_factory(fewshot_dir, broken.UnshardedDataset)))


def test_control_supervised_padding_rows_are_caught(fewshot_dir, expect_check_fails):
    expect_check_fails(h5.check_padding_rows(fewshot(fewshot_dir, broken.LabelledPaddingDataset)))
