"""H4: are the training dynamics sane? (investigation Test 4.1; DESIGN.md section 8)"""

from __future__ import annotations

import pytest

from etrm.checks import h4_training_dynamics as h4
from etrm.suite import broken
from etrm.suite.support import CompiledLayout, tiny_model
from etrm.testing.artifacts import TINY
from etrm.training import Trainer, TrainingConfig

pytestmark = pytest.mark.hypothesis4


@pytest.fixture(scope="module")
def batch(artifacts):
    return artifacts.batch_for(tiny_model("etrm-standard").config, TINY, batch_size=4, split="train")


@pytest.fixture(scope="module")
def run_configs(artifacts):
    from etrm.checkpoints import find_saved_config

    trm, etrm = artifacts.require_matching("trm_checkpoint", "etrm_checkpoint")
    etrm_saved, trm_saved = find_saved_config(etrm), find_saved_config(trm)
    if etrm_saved is None:
        pytest.skip(f"no all_config.yaml or etrm metadata beside {etrm}: nothing to audit")
    return etrm_saved, None if trm_saved is None else trm_saved.model_config


ORIGIN_LIKE = dict(lr=1e-4, encoder_lr_scale=0.1, encoder_weight_decay_scale=0.1, warmup_steps=2, global_batch_size=4)


def test_run_config_audit(run_configs, record_check):
    etrm_saved, trm_config = run_configs
    record_check(h4.check_config_audit(etrm_saved.model_config, etrm_saved.training, trm_config))


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("compiled", [False, True], ids=["plain-head", "compiled-head"])
@pytest.mark.parametrize("layout", ["single", "split"])
def test_effective_learning_rates_and_decay_per_part(layout, compiled, record_check):
    head = tiny_model("etrm-standard")
    head = CompiledLayout(head) if compiled else head  # parameter names gain `_orig_mod.`; nothing runs
    trainer = Trainer(head, TrainingConfig(**ORIGIN_LIKE, optimizer_layout=layout))
    record_check(h4.check_effective_learning_rates(trainer))


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("exploration", [0.1, 0.5])
def test_halting_rate_follows_exploration(exploration, batch, record_check):
    record_check(h4.check_halting_rate(tiny_model("etrm-standard", halt_exploration_prob=exploration), batch))


@pytest.mark.etrm_self_test
@pytest.mark.parametrize("name", ["etrm-standard", "etrmtrm-standard"])
def test_tiny_overfit_run_loss_falls(name, batch, record_check):
    record_check(h4.check_tiny_overfit(tiny_model(name), batch))


# --- negative controls ---------------------------------------------------------------------


def test_control_origin_l_cycles_on_a_decoder_trained_with_fewer_is_caught(run_configs, expect_check_fails):
    etrm_saved, trm_config = run_configs
    if trm_config is None:
        pytest.skip("the pretrained TRM's config is unknown")
    wrong = etrm_saved.model_config.replace(L_cycles=trm_config.L_cycles + 2)  # the origin ran 6 on a 4
    expect_check_fails(h4.check_config_audit(wrong, etrm_saved.training, trm_config))


def test_control_ignored_encoder_learning_rate_is_caught(expect_check_fails):
    trainer = broken.SingleGroupTrainer(tiny_model("etrm-standard"), TrainingConfig(**ORIGIN_LIKE))
    expect_check_fails(h4.check_effective_learning_rates(trainer))


def test_control_model_that_never_explores_is_caught(batch, expect_check_fails):
    # At the official 0.1, the hardest case: 100% halting against the expected 90%.
    head = broken.rebuild_as(tiny_model("etrm-standard", halt_exploration_prob=0.1), broken.NoExplorationETRM)
    expect_check_fails(h4.check_halting_rate(head, batch))


def test_control_dead_optimizer_is_caught(batch, expect_check_fails):
    dead = TrainingConfig(lr=0.0, warmup_steps=0, global_batch_size=4)
    expect_check_fails(h4.check_tiny_overfit(tiny_model("etrm-standard"), batch, config=dead))
