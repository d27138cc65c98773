"""ModelConfig validation and serialisation."""

import pytest

from etrm.config import ConfigError, ModelConfig, official_arc1_config, tiny_config


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"hidden_size": 30, "num_heads": 4}, "not divisible by num_heads"),
        ({"H_cycles": 0}, "H_cycles must be a positive integer"),
        ({"L_cycles": -1}, "L_cycles must be a positive integer"),
        ({"encoder_type": "lpn"}, "valid: standard, variational"),
        ({"model_type": "hrm"}, "valid: trm, etrm, etrmtrm"),
        ({"encoder_pooling_method": "max"}, "valid: mean, attention, weighted"),
        ({"halt_exploration_prob": 1.5}, "halt_exploration_prob"),
        ({"puzzle_emb_ndim": 10_000}, "puzzle_emb_ndim"),
    ],
)
def test_invalid_values_are_errors_that_say_what(changes, fragment):
    with pytest.raises(ConfigError, match=fragment):
        tiny_config("etrm").replace(**changes)


def test_unknown_keys_are_named():
    data = tiny_config().to_dict() | {"H_layers": 0, "name": "x"}
    with pytest.raises(ConfigError, match=r"unknown model config key\(s\) \['H_layers', 'name'\]"):
        ModelConfig.from_dict(data)


@pytest.mark.parametrize(
    "config", [tiny_config("trm"), tiny_config("etrmtrm", encoder_type="variational"), official_arc1_config()]
)
def test_round_trips_through_json_and_yaml(config, tmp_path):
    assert ModelConfig.from_json(config.to_json()) == config
    assert ModelConfig.from_yaml(config.to_yaml()) == config
    path = tmp_path / "model.yaml"
    path.write_text(config.to_yaml())
    assert ModelConfig.load(path) == config


def test_official_defaults_match_the_arc_agi_1_run():
    cfg = official_arc1_config()
    assert (cfg.hidden_size, cfg.num_heads, cfg.expansion, cfg.L_layers) == (512, 8, 4.0, 2)
    assert (cfg.H_cycles, cfg.L_cycles, cfg.halt_max_steps, cfg.halt_exploration_prob) == (3, 4, 16, 0.1)
    assert cfg.swiglu_width == 1536 and cfg.full_seq_len == 916


def test_missing_config_file_names_it(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        ModelConfig.load(tmp_path / "nope.yaml")
