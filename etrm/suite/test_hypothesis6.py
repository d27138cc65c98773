"""H6: is the evaluator right? (investigation Test 6.1, 6.2; DESIGN.md section 8)"""

from __future__ import annotations

import functools

import pytest

from etrm.checks import h6_evaluator as h6
from etrm.evaluation import ArcEvaluator
from etrm.suite import broken

pytestmark = pytest.mark.hypothesis6


@pytest.fixture(scope="module")
def evaluation_set(artifacts):
    """The test split of the user's built dataset when given (--etrm-data), else the 400 real
    ARC-AGI-1 evaluation tasks with one augmentation each."""
    if artifacts.source("data_dir") == "user":
        return h6.dataset_evaluation_set(artifacts.require("data_dir"))
    return h6.arc1_evaluation_set(num_aug=1)


@pytest.fixture(scope="module")
def mixed(evaluation_set):
    return h6.mixed_predictions(*evaluation_set)


def evaluator_factory(evaluation_set, cls=ArcEvaluator, **options):
    return functools.partial(cls, *evaluation_set, **options)


def test_all_correct_subsets_of_4_and_64_tasks_score_one(evaluation_set, record_check):
    record_check(h6.check_subset_size_invariance(evaluator_factory(evaluation_set), *evaluation_set))


def test_results_do_not_depend_on_batching_or_order(evaluation_set, mixed, record_check):
    record_check(h6.check_batching_invariance(evaluator_factory(evaluation_set), *mixed))


def test_two_ranks_give_the_single_process_result(evaluation_set, mixed, record_check):
    record_check(h6.check_rank_invariance(evaluator_factory(evaluation_set), *mixed))


def test_each_round_starts_from_fresh_votes(evaluation_set, record_check):
    record_check(h6.check_fresh_rounds(evaluator_factory(evaluation_set), *evaluation_set))


def test_augmented_predictions_are_undone(evaluation_set, record_check):
    record_check(h6.check_inverse_augmentation(evaluator_factory(evaluation_set), *evaluation_set))


def test_votes_rank_by_count_then_confidence(evaluation_set, record_check):
    record_check(h6.check_voting(evaluator_factory(evaluation_set), *evaluation_set))


def test_empty_evaluation_is_an_error(evaluation_set, record_check):
    record_check(h6.check_empty_evaluation_is_an_error(evaluator_factory(evaluation_set)))


# --- negative controls ---------------------------------------------------------------------


def test_control_official_denominator_is_caught(evaluation_set, expect_check_fails):
    make = evaluator_factory(evaluation_set, denominator="all_test_tasks")
    expect_check_fails(h6.check_subset_size_invariance(make, *evaluation_set))


@pytest.mark.filterwarnings("ignore:.*received no prediction")  # the broken evaluator drops votes
def test_control_batch_dependent_evaluator_is_caught(evaluation_set, mixed, expect_check_fails):
    make = evaluator_factory(evaluation_set, broken.LastBatchOnlyEvaluator)
    expect_check_fails(h6.check_batching_invariance(make, *mixed))


def test_control_evaluator_without_gather_is_caught(evaluation_set, mixed, expect_check_fails):
    make = evaluator_factory(evaluation_set, broken.NoGatherEvaluator)
    expect_check_fails(h6.check_rank_invariance(make, *mixed))


def test_control_pooled_rounds_are_caught(evaluation_set, expect_check_fails):
    make = evaluator_factory(evaluation_set, pool_rounds=True)
    expect_check_fails(h6.check_fresh_rounds(make, *evaluation_set))


def test_control_missing_inverse_augmentation_is_caught(evaluation_set, expect_check_fails):
    make = evaluator_factory(evaluation_set, broken.NoInverseEvaluator)
    expect_check_fails(h6.check_inverse_augmentation(make, *evaluation_set))


def test_control_confidence_over_majority_is_caught(evaluation_set, expect_check_fails):
    make = evaluator_factory(evaluation_set, broken.ConfidenceOnlyEvaluator)
    expect_check_fails(h6.check_voting(make, *evaluation_set))


def test_control_silent_empty_evaluation_is_caught(evaluation_set, expect_check_fails):
    make = evaluator_factory(evaluation_set, broken.SilentEmptyEvaluator)
    expect_check_fails(h6.check_empty_evaluation_is_an_error(make))
