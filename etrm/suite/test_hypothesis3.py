"""H3: is the encoder output well formed? (investigation Test 3.1; DESIGN.md section 8)"""

from __future__ import annotations

import pytest

from etrm.checks import h3_encoder_output as h3
from etrm.interface import as_interface
from etrm.suite import broken
from etrm.suite.support import TINY_ENCODER_MODELS, tiny_model
from etrm.testing.artifacts import TINY

pytestmark = pytest.mark.hypothesis3


@pytest.fixture(scope="module")
def tiny_batch(artifacts):
    """Real ARC queries whose tasks have fewer demos than slots, so padding is exercised."""
    return artifacts.batch_for(tiny_model("etrm-standard").config, TINY, batch_size=4)


@pytest.fixture(scope="module")
def checkpoint_case(checkpoint_model, artifacts):
    _, trm_ckpt = artifacts.require_matching("etrm_checkpoint", "trm_checkpoint")
    from etrm.checkpoints import normalize_key, read_state_dict

    model = checkpoint_model.model
    trm_state = {normalize_key(k): v for k, v in read_state_dict(trm_ckpt).items()}
    weights = trm_state.get("model.inner.puzzle_emb.weights")
    reference = None if weights is None or model.hidden_size is None else h3.prefix_rms(weights, model.hidden_size)
    # One sample (with its several demos): order and padding invariance, shape and scale are per
    # sample, and a second one doubles the encoder's cost at the official width.
    batch = artifacts.batch_for(checkpoint_model.config, "etrm_checkpoint", batch_size=1)
    # Its context, which four checks compare with, computed once (seconds at the official width).
    interface = as_interface(model)
    context = None if interface.missing("encoder") else interface.first_context(batch)
    return model, batch, reference, context


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("name", TINY_ENCODER_MODELS)
def test_context_shape_and_dtype(name, tiny_batch, record_check):
    record_check(h3.check_context_shape_and_dtype(tiny_model(name), tiny_batch))


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("name", TINY_ENCODER_MODELS)
def test_context_finite_even_without_demos(name, tiny_batch, record_check):
    record_check(h3.check_context_finite(tiny_model(name), tiny_batch))


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("name", TINY_ENCODER_MODELS)
def test_context_ignores_demo_order(name, tiny_batch, record_check):
    record_check(h3.check_demo_order_invariance(tiny_model(name), tiny_batch))


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("name", TINY_ENCODER_MODELS)
def test_context_ignores_padded_demo_slots(name, tiny_batch, record_check):
    record_check(h3.check_padding_invariance(tiny_model(name), tiny_batch))


@pytest.mark.etrm_costly
def test_checkpoint_context_well_formed(checkpoint_case, record_check):
    model, batch, _, context = checkpoint_case
    record_check(h3.check_context_shape_and_dtype(model, batch, context))
    record_check(h3.check_context_finite(model, batch))


@pytest.mark.etrm_costly
def test_checkpoint_context_ignores_demo_order(checkpoint_case, record_check):
    model, batch, _, context = checkpoint_case
    record_check(h3.check_demo_order_invariance(model, batch, context=context))


@pytest.mark.etrm_costly
def test_checkpoint_context_ignores_padded_demo_slots(checkpoint_case, record_check):
    model, batch, _, context = checkpoint_case
    record_check(h3.check_padding_invariance(model, batch, context=context))


@pytest.mark.etrm_costly
def test_checkpoint_context_scale_matches_the_trained_prefix(checkpoint_case, record_check):
    model, batch, reference, context = checkpoint_case
    record_check(h3.check_context_scale(model, batch, reference, context))


# --- negative controls ---------------------------------------------------------------------


def test_control_wrong_context_length_is_caught(tiny_batch, expect_check_fails):
    head = broken.with_encoder(tiny_model("etrm-standard"), broken.TokenDroppingEncoder)
    expect_check_fails(h3.check_context_shape_and_dtype(head, tiny_batch))


def test_control_nan_for_a_sample_without_demos_is_caught(tiny_batch, expect_check_fails):
    head = broken.with_encoder(tiny_model("etrm-standard"), broken.NaNOnEmptyEncoder)
    expect_check_fails(h3.check_context_finite(head, tiny_batch))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_control_order_sensitive_encoder_is_caught(dtype, tiny_batch, expect_check_fails):
    """In bfloat16 too, where the check allows for bfloat16 summation order: a demo-slot signal of
    1e-2 (a positional encoding over demos is O(1)) is still far outside it."""
    head = broken.with_encoder(tiny_model("etrm-standard", forward_dtype=dtype), broken.OrderSensitiveEncoder)
    expect_check_fails(h3.check_demo_order_invariance(head, tiny_batch))


def test_control_encoder_reading_padded_slots_is_caught(tiny_batch, expect_check_fails):
    head = broken.with_encoder(tiny_model("etrm-standard"), broken.PaddingReadingEncoder)
    expect_check_fails(h3.check_padding_invariance(head, tiny_batch))


def test_control_context_far_off_the_prefix_scale_is_caught(tiny_batch, expect_check_fails):
    head = broken.with_encoder(tiny_model("etrm-standard"), broken.LoudEncoder)
    expect_check_fails(h3.check_context_scale(head, tiny_batch, reference_rms=1.0))


def test_control_scale_without_a_reference_is_inconclusive(tiny_batch, expect_check_fails):
    expect_check_fails(h3.check_context_scale(tiny_model("etrm-standard"), tiny_batch, None), expected="inconclusive")
