"""The researcher's model code on its own: `--model-code ROOT --model-config config/arch/` with no
checkpoint, as a CI gate on every commit of their repository.

Each --model-config file (one case per file of a folder) is built by the user's code at the CI
size (`--model-size`, `etrm.config.arch`) with a seeded random initialisation, and gets batches
of real ARC-AGI-1 tasks built at that canvas (or the user's --data). Only the checks that need
no trained weights run here; those that do (decoder loading and drift, the context's scale
against trained puzzle embeddings) are the `checkpoint` tests, which say "needs a checkpoint".
A model without a demo encoder is not applicable to the encoder checks; the finiteness check
runs on it all the same.
"""

from __future__ import annotations

import pytest
import torch

from etrm.checks import h2_gradient_flow as h2
from etrm.checks import h3_encoder_output as h3
from etrm.checks import h7_encoder_capacity as h7
from etrm.suite import broken
from etrm.suite.support import tiny_model
from etrm.testing.artifacts import TINY

# Training ACT steps per check, as on a checkpoint (test_hypothesis2.STEPS): step 1 resets every
# sample, step 2 carries, where a context carried or cached after the first step starves the encoder.
STEPS = 2


@pytest.mark.hypothesis2
def test_model_code_encoder_requires_grad(model_code_case, record_check):
    record_check(h2.check_encoder_requires_grad(model_code_case.encoder_model()))


@pytest.mark.hypothesis2
def test_model_code_encoder_gets_gradient_every_act_step(model_code_case, record_check):
    record_check(
        h2.check_encoder_gradient_every_step(model_code_case.encoder_model(), model_code_case.batch, steps=STEPS)
    )


@pytest.mark.hypothesis2
def test_model_code_loss_responds_to_encoder(model_code_case, record_check):
    record_check(h2.check_loss_responds_to_encoder(model_code_case.encoder_model(), model_code_case.batch, steps=STEPS))


@pytest.mark.hypothesis2
def test_model_code_training_steps_finite_at_forward_dtype(model_code_case, record_check):
    record_check(h2.check_training_steps_finite(model_code_case.model, model_code_case.batch, steps=STEPS))


@pytest.mark.hypothesis3
def test_model_code_context_shape_dtype_and_finite_without_demos(model_code_case, record_check):
    model = model_code_case.encoder_model()
    record_check(h3.check_context_shape_and_dtype(model, model_code_case.batch))
    record_check(h3.check_context_finite(model, model_code_case.batch))


@pytest.mark.hypothesis3
def test_model_code_context_ignores_demo_order(model_code_case, record_check):
    record_check(h3.check_demo_order_invariance(model_code_case.encoder_model(), model_code_case.batch))


@pytest.mark.hypothesis3
def test_model_code_context_ignores_padded_demo_slots(model_code_case, record_check):
    record_check(h3.check_padding_invariance(model_code_case.encoder_model(), model_code_case.batch))


@pytest.mark.hypothesis7
def test_model_code_context_varies_across_tasks(model_code_case, record_check):
    model = model_code_case.encoder_model()
    record_check(h7.check_context_varies_across_tasks(model, *model_code_case.task_balanced_batch()))


# --- negative controls of what only runs here ------------------------------------------------


@pytest.mark.hypothesis2
def test_control_nan_gradient_fails_the_finiteness_check(artifacts, expect_check_fails):
    head = broken.rebuild_as(tiny_model("etrm-standard"), broken.NaNGradientETRM)
    batch = artifacts.batch_for(head.config, TINY, batch_size=2)
    result = expect_check_fails(h2.check_training_steps_finite(head, batch, steps=STEPS))
    assert result.numbers["nonfinite_grad_steps"] == STEPS and result.numbers["nonfinite_loss_steps"] == 0, result


@pytest.mark.hypothesis3
def test_control_batch_without_padded_slots_leaves_padding_invariance_undecided(artifacts, expect_check_fails):
    """A user's data may fill every demo slot: nothing is tested then, which must not read as a verdict."""
    head = tiny_model("etrm-standard")
    batch = artifacts.batch_for(head.config, TINY, batch_size=2)
    full = {**batch, "demo_mask": torch.ones_like(batch["demo_mask"])}
    expect_check_fails(h3.check_padding_invariance(head, full), expected="inconclusive")
