"""The keys of a trainer's `all_config.yaml` (official TRM and origin ETRM layouts) and what
etrm makes of each: the model class names, the `ModelConfig` fields under `arch:`, the
training hyper-parameters and their types, the keys ignored on purpose (each with its
reason) and those accepted only at the value etrm implements. `etrm.config.importer` reads
and writes the file by these tables and re-exports them."""

from __future__ import annotations

from typing import Any

# arch.name of each trainer's model class -> our model type.
ARCH_NAMES: dict[str, str] = {
    "trm": "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1",
    "etrm": "recursive_reasoning.etrm@TRMWithEncoder",
    "etrmtrm": "recursive_reasoning.etrmtrm@TRMWithRecurrentEncoder",
}
MODEL_TYPE_OF_ARCH = {name: model_type for model_type, name in ARCH_NAMES.items()}
LOSS_HEAD_NAME = "losses@ACTLossHead"
LOSS_TYPE = "stablemax_cross_entropy"

# The one list of settings a model must share with the checkpoint whose decoder it runs:
# each changes the function the weights compute, most without changing any tensor shape
# (L_cycles 4 vs 6, RoPE vs none, rope_theta, the norm epsilon, the ACT step budget), so
# the weights cannot tell. The decoder loader, `load_model` and the H1/H4 checks all
# compare exactly these. forward_dtype is not among them: running a bf16 checkpoint in
# fp32 is a legitimate choice, reported but not refused.
DECODER_SETTINGS = (
    "H_cycles",
    "L_cycles",
    "L_layers",
    "hidden_size",
    "num_heads",
    "puzzle_emb_len",
    "expansion",
    "pos_encodings",
    "rope_theta",
    "rms_norm_eps",
    "halt_max_steps",
)

# arch keys that are ModelConfig fields under the same name.
ARCH_MODEL_KEYS = (
    "H_cycles",
    "L_cycles",
    "L_layers",
    "hidden_size",
    "num_heads",
    "expansion",
    "puzzle_emb_ndim",
    "puzzle_emb_len",
    "pos_encodings",
    "rope_theta",
    "rms_norm_eps",
    "halt_max_steps",
    "halt_exploration_prob",
    "forward_dtype",
)
ENCODER_KEYS = (
    "encoder_type",
    "encoder_num_layers",
    "encoder_set_layers",
    "encoder_pooling_method",
    "encoder_norm_style",
)

IGNORED_TOP_KEYS: dict[str, str] = {
    "project_name": "run bookkeeping",
    "run_name": "run bookkeeping",
    "checkpoint_path": "where the run wrote checkpoints",
    "load_checkpoint": "a checkpoint the run resumed from",
    "data_paths": "dataset location, not a model setting",
    "data_paths_test": "dataset location, not a model setting",
    "evaluators": "evaluator list of the run",
    "checkpoint_every_eval": "checkpoint schedule",
    "eval_interval": "evaluation schedule",
    "min_eval_interval": "evaluation schedule",
    "eval_save_outputs": "evaluation dump settings",
    "log_predictions_every": "origin ETRM logging",
    "log_predictions_max_samples": "origin ETRM logging",
    "log_predictions_crop": "origin ETRM logging",
}
IGNORED_ARCH_KEYS: dict[str, str] = {
    "H_layers": "TRM has no H-level layers; the official TRM ignores it too",
    "recurrent_encoder_type": "origin ETRMTRM encoder variant (origin ETRMTRM checkpoints are not a compatibility target)",
    "lpn_latent_dim": "origin LPN encoders only",
    "encoder_h_cycles": "origin ETRMTRM trm_style encoder only",
    "encoder_l_cycles": "origin ETRMTRM trm_style encoder only",
    "encoder_l_layers": "origin ETRMTRM trm_style encoder only",
}
IGNORED_LOSS_KEYS: dict[str, str] = {"name": "loss head class; etrm has one (the official ACTLossHead)"}
# arch keys etrm accepts only at the value its model implements.
PINNED_ARCH_KEYS: dict[str, tuple[Any, str]] = {
    "mlp_t": (False, "etrm's decoder mixes tokens by attention, not by the mlp_t variant"),
    "no_ACT_continue": (True, "etrm's loss has no Q-continue term"),
    "encoder_layer_scale_init": (0.0, "etrm's encoder has no layer scale"),
    "encoder_qk_norm": (False, "etrm's encoder has no QK norm"),
}

# Training hyper-parameters, official names -> accepted types (None: the key may be null).
TRAINING_KEYS: dict[str, tuple[type, ...]] = {
    "global_batch_size": (int,),
    "epochs": (int,),
    "total_steps": (int, type(None)),
    "lr": (float,),
    "lr_min_ratio": (float,),
    "lr_warmup_steps": (int,),
    "weight_decay": (float,),
    "beta1": (float,),
    "beta2": (float,),
    "puzzle_emb_lr": (float,),
    "puzzle_emb_weight_decay": (float,),
    "ema": (bool,),
    "ema_rate": (float,),
    "freeze_weights": (bool,),
    "seed": (int,),
    "grad_clip_norm": (float,),  # 0 = off, as in the origin trainer
    "encoder_lr_scale": (float,),
    "encoder_weight_decay_scale": (float,),
    "encoder_freeze_steps": (int,),
    "freeze_decoder_steps": (int,),
    "load_pretrained_decoder": (str, type(None)),
    "max_train_groups": (int, type(None)),
    "max_eval_groups": (int, type(None)),
    "optimizer_layout": (str,),
    "loss_type": (str,),  # arch.loss.loss_type in the file
    "freeze_encoder": (bool,),  # arch.freeze_encoder in the file (origin)
}
# etrm's TrainingConfig names -> official names (write_training_config accepts both).
TRAINING_ALIASES = {"warmup_steps": "lr_warmup_steps", "freeze_encoder_steps": "encoder_freeze_steps"}
ETRM_SECTION_KEYS = ("seq_len", "vocab_size", "num_puzzle_identifiers", "version")
