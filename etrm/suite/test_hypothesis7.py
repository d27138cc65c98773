"""H7: is the encoder architecture too weak? (investigation Test 7.1, 7.2; DESIGN.md section 8)"""

from __future__ import annotations

import pytest
import torch

from etrm.checks import h7_encoder_capacity as h7
from etrm.checks import h7_generalisation as h7_gen
from etrm.checks import h7_headroom
from etrm.config import tiny_config
from etrm.data.datasets import fewshot_batch
from etrm.interface import as_interface
from etrm.models import build_encoder
from etrm.suite import broken
from etrm.suite.h7_case import known_case
from etrm.suite.support import TINY_ENCODER_MODELS, XDIST_GROUPS, task_balanced_batch, tiny_model
from etrm.testing.artifacts import TINY

pytestmark = pytest.mark.hypothesis7


@pytest.fixture(scope="module")
def tiny_case(artifacts):
    """Four evaluation tasks, each as its original and three augmentations."""
    from etrm.data.datasets import load_identifiers

    config = tiny_model("etrm-standard").config
    data_dir = artifacts.data_for(config, TINY)
    batch = fewshot_batch(data_dir, config, batch_size=16)
    return batch, h7.task_ids_of(batch, load_identifiers(data_dir))


@pytest.fixture(scope="module")
def checkpoint_case(checkpoint_model, artifacts):
    config = checkpoint_model.config
    data_dir = artifacts.data_for(config, "etrm_checkpoint")
    # Two augmentations each of four tasks: what both checks compare, in 8 samples.
    batch, tasks = task_balanced_batch(data_dir, config, per_task=2, num_tasks=4, device=artifacts.device)
    model = as_interface(checkpoint_model.model)
    # Computed once for both checks: every sample's demos through the user's encoder.
    context = None if model.missing("encoder") else model.first_context(batch)
    return model, batch, tasks, context


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("name", TINY_ENCODER_MODELS)
def test_context_varies_across_tasks(name, tiny_case, record_check):
    record_check(h7.check_context_varies_across_tasks(tiny_model(name), *tiny_case))


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("name", TINY_ENCODER_MODELS)
def test_context_agrees_within_task(name, tiny_case, record_check):
    record_check(h7.check_context_agrees_within_task(tiny_model(name), *tiny_case))


@pytest.mark.etrm_costly
@pytest.mark.xdist_group(XDIST_GROUPS["h7_contexts"])
def test_checkpoint_context_varies_across_tasks(checkpoint_case, record_check):
    model, batch, tasks, context = checkpoint_case
    record_check(h7.check_context_varies_across_tasks(model, batch, tasks, context=context))


@pytest.mark.etrm_costly
@pytest.mark.xdist_group(XDIST_GROUPS["h7_contexts"])
def test_checkpoint_context_agrees_within_task(checkpoint_case, record_check):
    model, batch, tasks, context = checkpoint_case
    record_check(h7.check_context_agrees_within_task(model, batch, tasks, context=context))


@pytest.mark.etrm_self_test
def test_encoder_can_separate_two_rules(record_check):
    torch.manual_seed(0)
    encoder = build_encoder(tiny_config("etrm", seq_len=25, max_demos=3))
    record_check(h7.check_separates_two_rules(encoder))


# --- negative controls ---------------------------------------------------------------------


def test_control_demo_blind_encoder_gives_identical_contexts(tiny_case, expect_check_fails):
    head = broken.with_encoder(tiny_model("etrm-standard"), broken.DemoBlindEncoder)
    expect_check_fails(h7.check_context_varies_across_tasks(head, *tiny_case))


def test_control_shuffled_task_labels_break_within_task_agreement(tiny_case, expect_check_fails):
    batch, tasks = tiny_case
    # Labels that group each sample with other tasks' samples: "within" is no closer than "across".
    scrambled = [f"group{i % 4}" for i in range(len(tasks))]
    expect_check_fails(h7.check_context_agrees_within_task(tiny_model("etrm-standard"), batch, scrambled))


def test_control_demo_blind_encoder_cannot_separate_rules(expect_check_fails):
    torch.manual_seed(0)
    encoder = broken.DemoBlindEncoder(build_encoder(tiny_config("etrm", seq_len=25, max_demos=3)))
    expect_check_fails(h7.check_separates_two_rules(encoder))


# --- context headroom, generalisation gap, embedding alignment (etrm.checks.h7_headroom) ----


@pytest.mark.etrm_costly
@pytest.mark.xdist_group(XDIST_GROUPS["h7_case"])
def test_h7_context_headroom(h7_case, record_check):
    record_check(h7_headroom.check_context_headroom(h7_case.measurement))


@pytest.mark.etrm_costly
@pytest.mark.xdist_group(XDIST_GROUPS["h7_case"])
def test_h7_generalisation_gap(h7_case, record_check):
    record_check(h7_gen.check_generalisation_gap(h7_case.measurement))


@pytest.mark.etrm_costly
@pytest.mark.xdist_group(XDIST_GROUPS["h7_case"])
def test_h7_embedding_alignment(h7_case, record_check):
    record_check(
        h7_gen.check_embedding_alignment(
            h7_case.measurement, h7_case.train_names, h7_case.heldout_names, h7_case.trm_prefixes
        )
    )


@pytest.fixture(scope="module")
def bottleneck_case():
    return known_case("bottleneck")


@pytest.mark.xdist_group(XDIST_GROUPS["h7_known"])
def test_control_bottleneck_encoder_leaves_headroom(bottleneck_case, expect_check_fails):
    """Trained through a demo-blind wrapper, the encoder cannot carry the rule: H7 evidence."""
    expect_check_fails(h7_headroom.check_context_headroom(bottleneck_case.measurement))


@pytest.mark.xdist_group(XDIST_GROUPS["h7_known"])
def test_control_bottleneck_encoder_is_off_the_embeddings(bottleneck_case, expect_check_fails):
    case = bottleneck_case
    expect_check_fails(
        h7_gen.check_embedding_alignment(case.measurement, case.train_names, case.heldout_names, case.trm_prefixes)
    )


@pytest.mark.xdist_group(XDIST_GROUPS["h7_known"])
def test_control_memorising_encoder_shows_a_generalisation_gap(expect_check_fails):
    """Trained with a context per training puzzle, picked by a hash of its demos: new demos land
    on a training puzzle's context, fitted on training queries and wrong for new tasks."""
    expect_check_fails(h7_gen.check_generalisation_gap(known_case("memoriser").measurement))


@pytest.mark.xdist_group(XDIST_GROUPS["h7_known"])
def test_control_context_blind_decoder_gives_no_headroom_evidence(expect_check_fails):
    """A decoder trained on an all-zero context: no context steers it, which is not H7 evidence."""
    expect_check_fails(h7_headroom.check_context_headroom(known_case("context_blind").measurement), "inconclusive")
