"""Importing official / origin all_config.yaml files, and writing ours in the same layout."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import yaml

from etrm.config import ConfigError, official_arc1_config, tiny_config
from etrm.config.importer import (
    DECODER_SETTINGS,
    IGNORED_TOP_KEYS,
    import_training_config,
    normalize_training_hparams,
    write_training_config,
)


def official_all_config() -> dict:
    """What the official pretrain.py dumps (`yaml.dump(config.model_dump())`) for the ARC-AGI-1 run."""
    return {
        "arch": {
            "name": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
            "loss": {"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy"},
            "halt_exploration_prob": 0.1,
            "halt_max_steps": 16,
            "H_cycles": 3,
            "L_cycles": 4,
            "H_layers": 0,
            "L_layers": 2,
            "hidden_size": 512,
            "num_heads": 8,
            "expansion": 4,
            "puzzle_emb_ndim": 512,
            "pos_encodings": "rope",
            "forward_dtype": "bfloat16",
            "mlp_t": False,
            "puzzle_emb_len": 16,
            "no_ACT_continue": True,
        },
        "data_paths": ["data/arc1concept-aug-1000"],
        "data_paths_test": [],
        "evaluators": [{"name": "arc@ARC"}],
        "global_batch_size": 768,
        "epochs": 100000,
        "lr": 0.0001,
        "lr_min_ratio": 1.0,
        "lr_warmup_steps": 2000,
        "weight_decay": 0.1,
        "beta1": 0.9,
        "beta2": 0.95,
        "puzzle_emb_lr": 0.01,
        "puzzle_emb_weight_decay": 0.1,
        "project_name": "Arc1concept-aug-1000-ACT-torch",
        "run_name": "pretrain_att_arc1concept_4",
        "load_checkpoint": None,
        "checkpoint_path": "checkpoints/Arc1concept-aug-1000-ACT-torch/pretrain_att_arc1concept_4",
        "seed": 0,
        "checkpoint_every_eval": True,
        "eval_interval": 10000,
        "min_eval_interval": 0,
        "eval_save_outputs": [],
        "ema": True,
        "ema_rate": 0.999,
        "freeze_weights": False,
    }


def origin_etrm_all_config() -> dict:
    """The origin ETRM trainer's dump (pretrain_etrm.py, arch/etrm.yaml)."""
    doc = official_all_config()
    for key in ("puzzle_emb_lr", "puzzle_emb_weight_decay"):
        del doc[key]
    doc["arch"].update(
        name="recursive_reasoning.etrm@TRMWithEncoder",
        L_cycles=6,
        halt_exploration_prob=0.5,
        puzzle_emb_ndim=0,
        loss={"name": "losses@ACTLossHead", "loss_type": "stablemax_cross_entropy", "kl_weight": 0.0},
        encoder_type="standard",
        encoder_num_layers=2,
        encoder_pooling_method="mean",
        encoder_set_layers=1,
        encoder_layer_scale_init=0.0,
        encoder_norm_style="post",
        encoder_qk_norm=False,
        freeze_encoder=False,
    )
    doc.update(
        global_batch_size=384,
        max_demos=10,
        grad_clip_norm=1.0,
        encoder_lr_scale=0.0,
        encoder_freeze_steps=0,
        load_pretrained_decoder="./checkpoints/official_trm/arc_v1_public/step_518071",
        freeze_decoder_steps=0,
        max_train_groups=None,
        max_eval_groups=None,
        log_predictions_every=5000,
        log_predictions_max_samples=32,
        log_predictions_crop=True,
    )
    return doc


def write(tmp_path, doc, name="all_config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.dump(doc))
    return path


def test_official_config_gives_the_official_model_and_recipe(tmp_path):
    imported = import_training_config(write(tmp_path, official_all_config()), num_puzzle_identifiers=876_406)
    assert imported.model_config == official_arc1_config()
    assert imported.training == {
        "global_batch_size": 768,
        "epochs": 100000,
        "lr": 1e-4,
        "lr_min_ratio": 1.0,
        "lr_warmup_steps": 2000,
        "weight_decay": 0.1,
        "beta1": 0.9,
        "beta2": 0.95,
        "puzzle_emb_lr": 1e-2,
        "puzzle_emb_weight_decay": 0.1,
        "seed": 0,
        "ema": True,
        "ema_rate": 0.999,
        "freeze_weights": False,
        "loss_type": "stablemax_cross_entropy",
    }
    assert imported.ema is True
    assert imported.recursion_settings() == {
        "H_cycles": 3,
        "L_cycles": 4,
        "L_layers": 2,
        "hidden_size": 512,
        "num_heads": 8,
        "puzzle_emb_len": 16,
        "expansion": 4.0,
        "pos_encodings": "rope",
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "halt_max_steps": 16,
    }
    # Every non-model key is accounted for, with its value kept for provenance.
    assert set(imported.ignored) == (set(IGNORED_TOP_KEYS) & set(official_all_config())) | {
        "arch.H_layers",
        "arch.mlp_t",
        "arch.no_ACT_continue",
        "arch.loss.name",
    }
    assert imported.ignored["run_name"] == "pretrain_att_arc1concept_4"


def test_origin_etrm_config_reads_encoder_settings_and_training_keys(tmp_path):
    imported = import_training_config(write(tmp_path, origin_etrm_all_config()))
    cfg = imported.model_config
    assert (cfg.model_type, cfg.L_cycles, cfg.halt_exploration_prob, cfg.puzzle_emb_ndim, cfg.max_demos) == (
        "etrm",
        6,
        0.5,
        0,
        10,
    )
    assert (cfg.encoder_type, cfg.encoder_num_layers, cfg.encoder_set_layers) == ("standard", 2, 1)
    for key, value in {
        "grad_clip_norm": 1.0,
        "encoder_lr_scale": 0.0,
        "freeze_decoder_steps": 0,
        "global_batch_size": 384,
        "freeze_encoder": False,
        "max_train_groups": None,
    }.items():
        assert imported.training[key] == value
    assert "log_predictions_every" in imported.ignored and "arch.encoder_qk_norm" in imported.ignored


def test_origin_etrmtrm_variant_keys_are_ignored_explicitly(tmp_path):
    doc = origin_etrm_all_config()
    doc["arch"].update(
        name="recursive_reasoning.etrmtrm@TRMWithRecurrentEncoder",
        recurrent_encoder_type="trm_style",
        lpn_latent_dim=32,
        encoder_h_cycles=3,
        encoder_l_cycles=4,
        encoder_l_layers=2,
    )
    imported = import_training_config(write(tmp_path, doc))
    assert imported.model_config.model_type == "etrmtrm"
    assert imported.ignored["arch.recurrent_encoder_type"] == "trm_style"


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d.update(supervision_curriculum=False), r"unknown key 'supervision_curriculum'"),
        (lambda d: d["arch"].update(rope_scaling=2), r"unknown key 'arch.rope_scaling'"),
        (lambda d: d["arch"]["loss"].update(label_smoothing=0.1), r"unknown key 'arch.loss.label_smoothing'"),
        (lambda d: d["arch"].update(mlp_t=True), r"arch.mlp_t = True is not supported"),
        (lambda d: d["arch"].update(no_ACT_continue=False), r"arch.no_ACT_continue = False is not supported"),
        (
            lambda d: d["arch"].update(name="recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1"),
            r"not a known model class",
        ),
        (lambda d: d.update(lr="fast"), r"lr must be float, got 'fast'"),
        (lambda d: d.update(ema="yes"), r"ema must be bool"),
        (lambda d: d["arch"].update(H_cycles=0), r"H_cycles must be a positive integer"),
        (lambda d: d["arch"].update(puzzle_emb_ndim="${.model_dim}"), r"interpolation this importer cannot resolve"),
        (lambda d: d.pop("arch"), r"no 'arch' mapping"),
    ],
)
def test_unknown_or_unsupported_keys_are_errors_naming_file_and_key(tmp_path, mutate, fragment):
    doc = official_all_config()
    mutate(doc)
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError, match=fragment) as err:
        import_training_config(path)
    assert str(path) in str(err.value)


def test_origin_encoder_etrm_lacks_still_reads_its_decoder_and_recipe(tmp_path):
    """F2's hybrid_variational: the decoder settings and training recipe still audit (H1, H4),
    but no etrm model can be built from it (load_model says to use --model-code)."""
    doc = origin_etrm_all_config()
    doc["arch"]["encoder_type"] = "hybrid_variational"
    imported = import_training_config(write(tmp_path, doc))
    assert imported.foreign_encoder == "hybrid_variational"
    assert imported.ignored["arch.encoder_type"] == "hybrid_variational"
    assert imported.model_config.L_cycles == doc["arch"]["L_cycles"]


def test_model_type_override_reads_a_renamed_class(tmp_path):
    doc = official_all_config()
    doc["arch"]["name"] = "my_fork.trm@TRM"
    assert import_training_config(write(tmp_path, doc), model_type="trm").model_config.model_type == "trm"


def test_raw_hydra_values_are_resolved(tmp_path):
    """A raw hydra file: `puzzle_emb_ndim: ${.hidden_size}` and `lr: 1e-4` (YAML 1.1 reads it as a string)."""
    doc = official_all_config()
    doc["arch"]["puzzle_emb_ndim"] = "${.hidden_size}"
    path = tmp_path / "all_config.yaml"
    path.write_text(yaml.dump(doc).replace("lr: 0.0001", "lr: 1e-4"))
    imported = import_training_config(path)
    assert imported.model_config.puzzle_emb_ndim == 512 and imported.training["lr"] == 1e-4


@pytest.mark.parametrize(
    "content, fragment", [(None, "not found"), ("arch: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "expected a mapping")]
)
def test_unreadable_files_are_errors(tmp_path, content, fragment):
    path = tmp_path / "all_config.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        import_training_config(path)


@dataclass
class _TrainingConfigLike:  # the shape of etrm.training.TrainingConfig
    lr: float = 3e-4
    betas: tuple = (0.9, 0.95)
    warmup_steps: int = 100
    ema_rate: float | None = None
    grad_clip_norm: float | None = 1.0
    freeze_decoder_steps: int = 999_999
    freeze_encoder_steps: int = 0


@pytest.mark.parametrize(
    "config",
    [
        tiny_config("trm"),
        tiny_config("etrm", kl_weight=0.5),
        tiny_config("etrmtrm", encoder_type="variational", L_cycles=4),
        official_arc1_config(),
    ],
)
def test_written_config_round_trips_in_the_official_layout(tmp_path, config):
    path = write_training_config(tmp_path / "all_config.yaml", config, _TrainingConfigLike())
    raw = yaml.safe_load(path.read_text())
    assert raw["arch"]["L_cycles"] == config.L_cycles and raw["arch"]["loss"]["name"] == "losses@ACTLossHead"
    imported = import_training_config(path)
    assert imported.model_config == config
    assert imported.training == {
        "lr": 3e-4,
        "beta1": 0.9,
        "beta2": 0.95,
        "lr_warmup_steps": 100,
        "ema": False,
        "grad_clip_norm": 1.0,
        "freeze_decoder_steps": 999_999,
        "encoder_freeze_steps": 0,
        "loss_type": "stablemax_cross_entropy",
    }
    assert set(DECODER_SETTINGS) <= set(raw["arch"])


def test_training_vocabularies_normalise_to_official_names():
    assert normalize_training_hparams({"ema_rate": 0.999}) == {"ema_rate": 0.999, "ema": True}
    assert normalize_training_hparams({"ema": False, "ema_rate": 0.999}) == {"ema": False, "ema_rate": 0.999}
    assert normalize_training_hparams({"grad_clip_norm": None, "warmup_steps": 5}) == {
        "grad_clip_norm": 0.0,
        "lr_warmup_steps": 5,
    }
    with pytest.raises(ConfigError, match="unknown training key 'momentum'"):
        normalize_training_hparams({"momentum": 0.9})
    with pytest.raises(ConfigError, match="betas"):
        normalize_training_hparams({"betas": 0.9})


def test_origin_etrmtrm_recurrent_encoders_are_foreign():
    """The origin ETRMTRM's recurrent encoders (trm_style, recurrent_standard) have no etrm
    implementation: read the decoder and recipe, build nothing (origin ETRMTRM checkpoints
    are not a compatibility target)."""
    from pathlib import Path

    corpus = Path(__file__).resolve().parents[1] / "fixtures" / "interop" / "origin"
    for run, encoder in (("etrmtrm-trm-style", "trm_style"), ("etrmtrm-recurrent-standard", "recurrent_standard")):
        imported = import_training_config(corpus / run / "all_config.yaml")
        assert imported.foreign_encoder == encoder and imported.model_config.L_cycles == 4
