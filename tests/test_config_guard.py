"""One list of settings (DECODER_SETTINGS) guards every door from a checkpoint to a model:
the decoder loader, `load_model` and the H4 audit refuse a model whose function differs
from the one the weights were trained in, even where no tensor shape changes. Run on the
official trainer's own checkpoint (fixtures/interop), not on ours."""

from __future__ import annotations

from pathlib import Path

import pytest

from etrm.checkpoints import ConfigMismatchError, find_saved_config, load_model, load_pretrained_decoder
from etrm.checks import h4_training_dynamics as h4
from etrm.checks.experiment1 import experiment_model_config
from etrm.config.importer import DECODER_SETTINGS
from etrm.models import build_model

OFFICIAL = Path(__file__).resolve().parents[1] / "fixtures" / "interop" / "official" / "trm-fp32" / "step_100"
# Each changes what the official decoder computes and none changes a tensor shape.
SAME_SHAPES = {
    "pos_encodings": "none",
    "rope_theta": 500.0,
    "halt_max_steps": 7,
    "rms_norm_eps": 1e-3,
    "L_cycles": 6,
    "H_cycles": 2,
}


@pytest.fixture(scope="module")
def saved():
    return find_saved_config(OFFICIAL)


def test_the_list_names_every_setting_the_issue_lists():
    assert set(SAME_SHAPES) | {"L_layers", "hidden_size", "num_heads", "puzzle_emb_len", "expansion"} == set(
        DECODER_SETTINGS
    )


@pytest.mark.parametrize("setting", SAME_SHAPES)
def test_load_model_refuses_a_setting_the_weights_were_not_trained_with(setting, saved):
    config = saved.model_config.replace(num_puzzle_identifiers=181, **{setting: SAME_SHAPES[setting]})
    with pytest.raises(ConfigMismatchError, match=f"{setting}: model"):
        load_model(OFFICIAL, config)


@pytest.mark.parametrize("setting", SAME_SHAPES)
def test_decoder_loader_refuses_it_too(setting):
    head = build_model(experiment_model_config(OFFICIAL, **{setting: SAME_SHAPES[setting]}))
    with pytest.raises(ConfigMismatchError, match=f"{setting}: model"):
        load_pretrained_decoder(head, OFFICIAL)


@pytest.mark.parametrize("setting", SAME_SHAPES)
def test_h4_audit_fails_on_it(setting, saved):
    etrm_config = experiment_model_config(OFFICIAL, **{setting: SAME_SHAPES[setting]})
    result = h4.check_config_audit(etrm_config, {}, saved.model_config)
    assert result.status == "fail" and setting in result.message, result.message


def test_forward_dtype_is_reported_not_refused(saved):
    head = build_model(experiment_model_config(OFFICIAL, forward_dtype="bfloat16"))
    report = load_pretrained_decoder(head, OFFICIAL)
    assert report.config_status == "verified"
    assert load_model(OFFICIAL, saved.model_config.replace(num_puzzle_identifiers=181, forward_dtype="bfloat16"))
