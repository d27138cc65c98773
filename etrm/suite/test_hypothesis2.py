"""H2: do encoder gradients flow? (investigation Test 2.1, 2.2; DESIGN.md section 8)"""

from __future__ import annotations

import json

import pytest

from etrm.checks import h2_gradient_flow as h2
from etrm.interface import TRMInterface
from etrm.suite import broken
from etrm.suite.support import TINY_ENCODER_MODELS, tiny_model, training_log
from etrm.testing.artifacts import TINY

pytestmark = pytest.mark.hypothesis2


# ACT steps the gradient check runs on a checkpoint, and its controls: step 1 resets every
# sample, step 2 carries, so a context carried or cached after a sample's first step starves the
# encoder from step 2 on. Each further step is a full recursion at the user's width and dtype
# (about 1.5 s at the official size on 2 cores) that adds no power.
STEPS = 2
# The loss check and its control read one step: a decoder that ignores the context ignores it
# on every step, so the second step (a second pair of recursions) would add no power.
LOSS_STEPS = 1
# One sample on a checkpoint: every check above is per sample (a gradient reaches the encoder
# through each sample's own context), so a second one doubles the cost at the official width
# and adds no power; the controls' tiny batch keeps three.
CHECKPOINT_BATCH = 1


@pytest.fixture(scope="module")
def tiny_batch(artifacts):
    return artifacts.batch_for(tiny_model("etrm-standard").config, TINY, batch_size=3)


@pytest.fixture(scope="module")
def checkpoint_model_and_batch(checkpoint_model, artifacts):
    return checkpoint_model.model, artifacts.batch_for(
        checkpoint_model.config, "etrm_checkpoint", batch_size=CHECKPOINT_BATCH
    )


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("name", TINY_ENCODER_MODELS)
def test_every_encoder_parameter_gets_gradient_every_act_step(name, tiny_batch, record_check):
    record_check(h2.check_encoder_gradient_every_step(tiny_model(name), tiny_batch, steps=3))


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("name", TINY_ENCODER_MODELS)
def test_loss_responds_to_encoder_weights(name, tiny_batch, record_check):
    record_check(h2.check_loss_responds_to_encoder(tiny_model(name), tiny_batch))


def test_checkpoint_encoder_requires_grad(checkpoint_model_and_batch, record_check):
    record_check(h2.check_encoder_requires_grad(checkpoint_model_and_batch[0]))


@pytest.mark.etrm_costly
def test_checkpoint_encoder_gets_gradient_every_act_step(checkpoint_model_and_batch, record_check):
    head, batch = checkpoint_model_and_batch
    record_check(h2.check_encoder_gradient_every_step(head, batch, steps=STEPS))


@pytest.mark.etrm_costly
def test_checkpoint_loss_responds_to_encoder(checkpoint_model_and_batch, record_check):
    head, batch = checkpoint_model_and_batch
    record_check(h2.check_loss_responds_to_encoder(head, batch, steps=LOSS_STEPS))


def test_training_log_has_healthy_preclip_encoder_norms(artifacts, record_check):
    record_check(h2.check_preclip_norms_logged(training_log(artifacts)))


# --- negative controls ---------------------------------------------------------------------


def test_control_detached_encoder_output_is_caught(tiny_batch, expect_check_fails):
    head = broken.rebuild_as(tiny_model("etrm-standard"), broken.DetachedEncoderETRM)
    result = expect_check_fails(h2.check_encoder_gradient_every_step(head, tiny_batch, steps=STEPS))
    assert ".detach()" in result.message and "non-finite" not in result.message, result.message


def test_control_nan_encoder_gradient_is_caught_and_not_blamed_on_detach(tiny_batch, expect_check_fails):
    head = broken.rebuild_as(tiny_model("etrm-standard"), broken.NaNGradientETRM)
    result = expect_check_fails(h2.check_encoder_gradient_every_step(head, tiny_batch, steps=STEPS))
    assert "non-finite" in result.message and ".detach()" not in result.message, result.message
    assert result.numbers["nonfinite_steps"] == STEPS and result.numbers["starved_steps"] == 0


def test_control_context_cached_after_a_samples_first_step_is_caught(tiny_batch, expect_check_fails):
    head = broken.rebuild_as(tiny_model("etrm-standard"), broken.CachedContextETRM)
    expect_check_fails(h2.check_encoder_gradient_every_step(TRMInterface.from_etrm(head), tiny_batch, steps=STEPS))


def test_control_frozen_encoder_is_caught(expect_check_fails):
    head = tiny_model("etrm-standard")
    head.model.freeze_encoder()
    expect_check_fails(h2.check_encoder_requires_grad(head))


def test_control_decoder_ignoring_the_context_is_caught(tiny_batch, expect_check_fails):
    head = broken.rebuild_as(tiny_model("etrm-standard"), broken.PrefixIgnoringETRM)
    expect_check_fails(h2.check_loss_responds_to_encoder(head, tiny_batch, steps=LOSS_STEPS))


def test_control_log_with_only_postclip_norms_is_inconclusive(expect_check_fails):
    origin_style = [{"step": i, "grad/encoder_norm": 1.0, "train/lm_loss": 0.7} for i in range(5)]
    expect_check_fails(h2.check_preclip_norms_logged(origin_style), expected="inconclusive")


def test_control_log_with_zero_preclip_norms_is_caught(expect_check_fails):
    stuck = [{"step": i, "grad/encoder_norm_preclip": 0.0, "grad/encoder_norm_postclip": 0.0} for i in range(5)]
    expect_check_fails(h2.check_preclip_norms_logged(json.loads(json.dumps(stuck))))
