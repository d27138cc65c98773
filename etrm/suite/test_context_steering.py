"""The design's premise, measured by H7's headroom (etrm.checks.h7_headroom): can any context
steer the decoder? Its own row: "the decoder cannot be steered by a context" is a finding
against the premise, never H7 evidence against the encoder."""

from __future__ import annotations

import pytest

from etrm.checks import h7_headroom
from etrm.suite.h7_case import known_case
from etrm.suite.support import XDIST_GROUPS

pytestmark = pytest.mark.context_steering


@pytest.mark.etrm_costly
@pytest.mark.xdist_group(XDIST_GROUPS["h7_case"])
def test_h7_decoder_steerable(h7_case, record_check):
    record_check(h7_headroom.check_decoder_steerable(h7_case.measurement))


@pytest.mark.xdist_group(XDIST_GROUPS["h7_known"])
def test_control_context_blind_decoder_cannot_be_steered(expect_check_fails):
    """Its decoder was trained with an all-zero context (a TRM with puzzle_emb_ndim 0)."""
    expect_check_fails(h7_headroom.check_decoder_steerable(known_case("context_blind").measurement))
