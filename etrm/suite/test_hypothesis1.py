"""H1: does the pretrained TRM decoder load correctly? (investigation Tests 1.1-1.3)"""

from __future__ import annotations

import shutil

import pytest
import torch

from etrm.checks import h1_decoder_loading as h1
from etrm.checks.experiment1 import experiment_model_config
from etrm.models import build_model
from etrm.suite import broken
from etrm.suite.support import CompiledLayout, training_log

pytestmark = pytest.mark.hypothesis1


@pytest.fixture(scope="module")
def trm(artifacts):
    return artifacts.require("trm_checkpoint")


def etrm_for(trm_path, compiled=False, **overrides):
    torch.manual_seed(0)
    head = build_model(experiment_model_config(trm_path, **overrides))
    return CompiledLayout(head) if compiled else head  # the key layout only: no forward runs


@pytest.fixture(scope="module")
def layouts(trm, tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    return {
        name: h1.relayout_checkpoint(trm, root / name / trm.name, "" if not p else p)
        for name, p in h1.KEY_LAYOUTS.items()
    }


@pytest.mark.parametrize("compiled", [False, True], ids=["plain-target", "compiled-target"])
@pytest.mark.parametrize("layout", list(h1.KEY_LAYOUTS))
def test_decoder_loads_bitwise_for_every_key_layout(layouts, layout, compiled, trm, record_check):
    record_check(h1.check_decoder_loads_bitwise(etrm_for(trm, compiled), layouts[layout]))


def test_checkpoint_as_given_loads_bitwise(trm, record_check):
    record_check(h1.check_decoder_loads_bitwise(etrm_for(trm), trm))


def test_recursion_settings_match_the_saved_config(trm, record_check):
    record_check(h1.check_recursion_config(etrm_for(trm), trm))


def test_ema_provenance_is_known(trm, record_check):
    record_check(h1.check_ema_provenance(trm))


def test_etrm_decoder_drift_matches_its_freezing(artifacts, record_check):
    trm, etrm = artifacts.require_matching("trm_checkpoint", "etrm_checkpoint")
    record_check(h1.check_decoder_drift_matches_freezing(trm, etrm))


def test_frozen_run_kept_every_decoder_parameter(artifacts, record_check):
    trm, frozen = artifacts.require_matching("trm_checkpoint", "etrm_frozen_checkpoint")
    record_check(h1.check_decoder_drift_matches_freezing(trm, frozen))


# Freezing is about which tensors the optimizer may touch, not numerics or data: these run
# in float32 (a reported, legitimate forward_dtype choice; bf16 matmuls on a CPU without bf16
# units are ~14x slower) with one sample and one demo slot for one step, because at canvas
# 30 a training step's attention backward costs seconds per demo. One step suffices: the
# first optimizer step already applies the gradient and weight decay a frozen tensor must
# not get, and the broken trainer (decay still on) is caught on it. One H and one L cycle:
# the recursion depth is how often the same decoder tensors are applied, not which exist or
# which the optimizer holds, so the step trains the same tensors with 2 L-level applications
# instead of H_cycles * (L_cycles + 1) (15 at the official 3 x 4).
FREEZING = dict(forward_dtype="float32", max_demos=1, H_cycles=1, L_cycles=1)


@pytest.mark.etrm_costly
def test_frozen_decoder_unchanged_after_training_steps(trm, artifacts, record_check):
    head = etrm_for(trm, **FREEZING)
    h1.check_decoder_loads_bitwise(head, trm)
    batch = artifacts.batch_for(head.config, "trm_checkpoint", batch_size=1, split="train")
    record_check(h1.check_frozen_decoder_unchanged(head, [batch], steps=1))


def test_training_log_records_the_decoder_load(artifacts, record_check):
    record_check(h1.check_log_records_decoder_load(training_log(artifacts)))


# --- negative controls ---------------------------------------------------------------------


def test_control_loader_that_ignores_wrong_prefixes_is_caught(layouts, trm, expect_check_fails):
    expect_check_fails(
        h1.check_decoder_loads_bitwise(etrm_for(trm), layouts["compiled"], loader=broken.plain_prefix_loader)
    )


def test_control_recursion_mismatch_is_caught(trm, expect_check_fails):
    model = etrm_for(trm, L_cycles=etrm_for(trm).config.L_cycles + 1)
    expect_check_fails(h1.check_recursion_config(model, trm))
    expect_check_fails(h1.check_decoder_loads_bitwise(model, trm))


def test_control_checkpoint_without_saved_config_is_inconclusive(trm, tmp_path, expect_check_fails):
    bare = shutil.copy(trm, tmp_path / trm.name)
    expect_check_fails(h1.check_recursion_config(etrm_for(trm), bare), expected="inconclusive")
    expect_check_fails(h1.check_ema_provenance(bare), expected="inconclusive")


def test_control_drifted_decoder_claimed_frozen_is_caught(artifacts, tmp_path, expect_check_fails):
    trm, trained, frozen = artifacts.require_matching("trm_checkpoint", "etrm_checkpoint", "etrm_frozen_checkpoint")
    mislabelled = broken.mislabelled_frozen_checkpoint(trained, frozen, tmp_path / "mislabelled")
    expect_check_fails(h1.check_decoder_drift_matches_freezing(trm, mislabelled))


@pytest.mark.etrm_costly
def test_control_frozen_decoder_that_still_decays_is_caught(trm, artifacts, expect_check_fails):
    head = etrm_for(trm, **FREEZING)
    h1.check_decoder_loads_bitwise(head, trm)
    batch = artifacts.batch_for(head.config, "trm_checkpoint", batch_size=1, split="train")
    expect_check_fails(
        h1.check_frozen_decoder_unchanged(head, [batch], steps=1, trainer_class=broken.ZeroGradFreezeTrainer)
    )


def test_control_log_without_a_load_record_is_inconclusive(expect_check_fails):
    log = [{"step": i, "train/lm_loss": 1.0} for i in range(1, 4)]
    expect_check_fails(h1.check_log_records_decoder_load(log), expected="inconclusive")


def test_control_load_logged_after_training_started_is_caught(expect_check_fails):
    log = [{"step": 1, "train/lm_loss": 1.0}, {"step": 5, "pretrained_decoder/params_loaded": 6}]
    expect_check_fails(h1.check_log_records_decoder_load(log))


# --- the ETRM checkpoint as a model (built by --model-code when given) ---------------------------


def test_checkpoint_model_decoder_matches_the_trm(checkpoint_model, artifacts, record_check):
    trm, _ = artifacts.require_matching("trm_checkpoint", "etrm_checkpoint")
    frozen = h1.decoder_frozen_in_run(checkpoint_model.checkpoint)
    record_check(h1.check_model_decoder_matches_trm(checkpoint_model.model, trm, frozen))


def test_control_model_decoder_drifted_in_a_frozen_run_is_caught(trm, expect_check_fails):
    head = etrm_for(trm)
    h1.check_decoder_loads_bitwise(head, trm)
    with torch.no_grad():
        head.model.inner.lm_head.weight.add_(1e-3)
    expect_check_fails(h1.check_model_decoder_matches_trm(head, trm, frozen=True))
    expect_check_fails(h1.check_model_decoder_matches_trm(head, trm, frozen=None), expected="inconclusive")
