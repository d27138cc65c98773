"""H7's memorisation gap, embedding alignment and "clearly better" guard, each decided by a
trained or constructed case whose answer is known (fixtures/make_h7_cases.py): the gap fires
on the memoriser and on no other case, the alignment's R^2 rule alone keeps the aligned case
from being called "off", and an encoder that already solves the held-out queries leaves no
headroom."""

from __future__ import annotations

import pytest

from etrm.checks import h7_generalisation as gen
from etrm.checks import h7_headroom as headroom
from etrm.suite.h7_case import KNOWN_CASES, known_case


@pytest.fixture(scope="module")
def cases():
    return {name: known_case(name) for name in KNOWN_CASES}


def _alignment(case):
    return gen.check_embedding_alignment(case.measurement, case.train_names, case.heldout_names, case.trm_prefixes)


def test_memorising_encoder_shows_the_gap(cases):
    """A context row per training puzzle, picked by a hash of its demos: the training queries
    are fitted, new demos land on some training puzzle's row."""
    m = cases["memoriser"].measurement
    result = gen.check_generalisation_gap(m)
    assert result.status == "fail", result.message
    assert result.message.startswith("the encoder maps new demonstrations onto tasks it knows")
    n = result.numbers
    assert n["gap_ratio"] >= gen.GAP_RATIO and n["confusion_rate"] >= gen.MAX_CONFUSION
    assert n["p_value"] <= n["alpha"] == 0.05
    # Each training query fitted below every held-out one's loss but at most one (8 tasks each).
    assert n["train_tasks"] == n["heldout_tasks"] == 8
    assert sum(t > max(m.train_losses) for t in (s.encoder_loss for s in m.tasks)) >= 7


@pytest.mark.parametrize("name", [n for n in KNOWN_CASES if n != "memoriser"])
def test_no_other_case_shows_the_gap(cases, name):
    """The demo-blind bottleneck (one context for all), the context-blind decoder, the aligned
    copy of the TRM's embeddings and the rule solver do not memorise their training tasks."""
    result = gen.check_generalisation_gap(cases[name].measurement)
    assert result.status != "fail", result.message


def test_aligned_contexts_are_aligned_though_the_embeddings_steer_better(cases):
    """Minus the TRM's embedding, one slot later: a linear map takes it back exactly. The TRM's
    embedding does steer the decoder better on significantly many tasks (asserted: it is what
    leaves the R^2 rule to decide), so a rule that ignored R^2 would call it "off"."""
    result = _alignment(cases["aligned"])
    n = result.numbers
    assert n["p_value"] <= n["alpha"], "precondition: the TRM's embedding must steer better here"
    assert n["heldout_r2"] >= gen.MIN_R2 and n["train_r2"] > 0.99
    assert result.status == "pass", result.message


def test_bottleneck_contexts_are_off_the_embeddings(cases):
    """One context for every puzzle explains none of the embeddings' variance."""
    result = _alignment(cases["bottleneck"])
    assert result.numbers["heldout_r2"] < gen.MIN_R2 and result.numbers["p_value"] <= result.numbers["alpha"]
    assert result.status == "fail" and "miss what the decoder reads" in result.message


def test_encoder_that_solves_the_queries_leaves_no_headroom(cases):
    """A rule oracle's context per colour shift with a decoder trained to apply each: the
    encoder's context already solves the held-out queries, so however exact the searched context
    is too, there is nothing clearly better to find."""
    m = cases["rule_solver"].measurement
    assert 2 * sum(s.encoder_exact for s in m.tasks) > len(m.tasks) == 8
    # What leaves the guard to decide: the searched context, started at the encoder's, is exact
    # too, and an exact answer alone counts as clearly better.
    assert sum(s.optimised_exact for s in m.tasks if s.encoder_exact) >= 7
    result = headroom.check_context_headroom(m)
    assert result.status == "pass" and "already solves" in result.message, result.message
    assert result.numbers["tasks_steered"] == 0 and result.numbers["mean_relative_gain"] == 0
    assert headroom.check_decoder_steerable(m).status == "pass"
