"""Experiment 1's run settings, and reading them from the origin trainer's experiment config.

`RunSettings` is what `etrm experiment1` runs with. `settings_from_config` composes an
origin config file (e.g. `config/cfg_test_frozen_decoder.yaml`, which inherits through its
`defaults` list from `cfg_pretrain_etrm_arc_agi_1` and `arch: etrm`) with hydra-core's
compose API, as the origin's `@hydra.main` trainer does, and maps the keys the
investigation's run sets onto the settings:

- `lr`, `encoder_lr_scale` (the origin's 0 means "one optimizer": the encoder at lr),
  `lr_warmup_steps`, `grad_clip_norm` (0 = off), `global_batch_size`, `seed`,
  `max_train_groups`, `max_eval_groups`;
- `freeze_decoder_steps` (the origin's 999999 is "the whole run");
- `epochs` -> steps as the origin computes its total: `int(epochs * total_groups *
  mean_puzzle_examples / global_batch_size)` from the train split's dataset.json;
  `eval_interval` (in epochs) -> an evaluation every `steps * eval_interval / epochs` steps;
- `load_pretrained_decoder`: the TRM checkpoint, unless `--trm-checkpoint` names one;
- the `arch` block and `max_demos`: the model (see `etrm.config.importer`).

Command-line flags override the file. Every other key is listed in `ignored` with the
reason it changes nothing in this run (the CLI prints them as a warning): none is dropped
silently.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from etrm.config import ConfigError

ORIGIN_FOREVER = 999_999  # the origin config's "freeze the decoder forever"
# Keys of the origin's configs that change nothing in `etrm experiment1`, and why.
NO_EFFECT_KEYS = {
    "data_paths": "the dataset is --data",
    "data_paths_test": "the dataset is --data",
    "evaluators": "etrm's ARC evaluator scores every run",
    "checkpoint_every_eval": "checkpoints follow --checkpoint-every",
    "checkpoint_path": "checkpoints go to --out",
    "min_eval_interval": "evaluations follow eval_interval / --eval-every",
    "project_name": "W&B project: --wandb-project",
    "run_name": "run bookkeeping",
    "log_predictions_every": "prediction images are not logged",
    "log_predictions_max_samples": "prediction images are not logged",
    "log_predictions_crop": "prediction images are not logged",
    "ema": "Experiment 1 evaluates the trained weights, not an EMA copy",
    "ema_rate": "Experiment 1 evaluates the trained weights, not an EMA copy",
    "freeze_weights": "the origin keeps it 'for compatibility' and does not use it in encoder mode",
    "puzzle_emb_lr": "an ETRM has no puzzle embedding",
    "puzzle_emb_weight_decay": "an ETRM has no puzzle embedding",
    "hydra": "hydra's own settings",
}
# Keys read into RunSettings (or the model) and so never warned about.
READ_KEYS = {
    "lr",
    "encoder_lr_scale",
    "lr_warmup_steps",
    "grad_clip_norm",
    "global_batch_size",
    "seed",
    "epochs",
    "eval_interval",
    "max_train_groups",
    "max_eval_groups",
    "freeze_decoder_steps",
    "load_pretrained_decoder",
    "arch",
    "max_demos",
    "weight_decay",
    "beta1",
    "beta2",
    "lr_min_ratio",
}


@dataclass(frozen=True)
class RunSettings:
    """One Experiment 1 run. `freeze_decoder_steps` None: frozen for the whole run."""

    steps: int = 200
    global_batch_size: int = 8
    eval_every: int | None = None  # None: steps / 4
    lr: float = 3e-4
    encoder_lr_scale: float = 1.0
    warmup_steps: int | None = None  # None: min(10, steps)
    grad_clip_norm: float | None = 1.0
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    lr_min_ratio: float = 1.0
    freeze_decoder_steps: int | None = None
    max_train_groups: int | None = None
    max_eval_groups: int | None = None
    seed: int = 0
    checkpoint_every: int | None = None  # None: only at the end

    @property
    def interval(self) -> int:
        return self.eval_every or max(1, self.steps // 4)

    @property
    def warmup(self) -> int:
        return min(10, self.steps) if self.warmup_steps is None else self.warmup_steps

    def frozen_steps(self, frozen: bool) -> int:
        if not frozen:
            return 0
        if self.freeze_decoder_steps is None or self.freeze_decoder_steps >= ORIGIN_FOREVER:
            return self.steps + 1
        return self.freeze_decoder_steps

    def replace(self, **changes: Any) -> RunSettings:
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data


@dataclass(frozen=True)
class ComposedConfig:
    """An origin experiment config composed by hydra, and what it means here."""

    path: Path
    doc: dict[str, Any]  # the whole composed config (plain containers)
    settings: dict[str, Any]  # RunSettings fields it sets
    trm_checkpoint: str | None  # load_pretrained_decoder
    ignored: dict[str, str]  # key -> why it changes nothing in this run


def compose_config(path: str | Path) -> dict[str, Any]:
    """The config file composed through its `defaults` list by hydra-core's compose API."""
    try:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra
        from omegaconf import OmegaConf
    except ImportError:
        raise ConfigError(f"{path}: composing an origin config needs hydra-core (pip install 'etrm[hydra]')") from None
    path = Path(path).resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(path.parent), version_base=None):
            cfg = compose(config_name=path.stem)
        doc = OmegaConf.to_container(cfg, resolve=True)
    except Exception as err:  # hydra's own errors: missing default, bad YAML, bad interpolation
        raise ConfigError(f"{path}: hydra could not compose it: {type(err).__name__}: {err}".splitlines()[0]) from None
    finally:
        GlobalHydra.instance().clear()
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: composes to a {type(doc).__name__}, not a mapping")
    return doc


def settings_from_config(path: str | Path, data_dir: str | Path) -> ComposedConfig:
    """The run settings an origin experiment config sets, on the dataset at `data_dir`."""
    from etrm.data.layout import load_metadata

    doc = compose_config(path)
    get = doc.get
    settings: dict[str, Any] = {}
    for key, field in (
        ("lr", "lr"),
        ("lr_warmup_steps", "warmup_steps"),
        ("global_batch_size", "global_batch_size"),
        ("seed", "seed"),
        ("max_train_groups", "max_train_groups"),
        ("max_eval_groups", "max_eval_groups"),
        ("weight_decay", "weight_decay"),
        ("lr_min_ratio", "lr_min_ratio"),
    ):
        if get(key) is not None:
            settings[field] = get(key)
    if get("encoder_lr_scale") is not None:  # the origin's 0: no separate encoder group, i.e. the encoder at lr
        settings["encoder_lr_scale"] = float(get("encoder_lr_scale")) or 1.0
    if get("grad_clip_norm") is not None:
        settings["grad_clip_norm"] = float(get("grad_clip_norm")) or None
    if get("beta1") is not None and get("beta2") is not None:
        settings["betas"] = (float(get("beta1")), float(get("beta2")))
    if get("freeze_decoder_steps") is not None:
        settings["freeze_decoder_steps"] = int(get("freeze_decoder_steps"))
    if get("epochs") is not None:
        meta = load_metadata(data_dir, "train")
        batch = int(settings.get("global_batch_size", RunSettings.global_batch_size))
        steps = int(get("epochs") * meta.total_groups * meta.mean_puzzle_examples / batch)
        if steps < 1:
            raise ConfigError(
                f"{path}: epochs {get('epochs')} on {data_dir} ({meta.total_groups} groups, "
                f"{meta.mean_puzzle_examples:g} examples each) at global_batch_size {batch} is 0 steps"
            )
        settings["steps"] = steps
        if get("eval_interval"):
            settings["eval_every"] = max(1, int(steps * get("eval_interval") / get("epochs")))
    ignored = {
        key: NO_EFFECT_KEYS.get(key, "not a setting etrm experiment1 has") for key in doc if key not in READ_KEYS
    }
    return ComposedConfig(Path(path), doc, settings, get("load_pretrained_decoder"), ignored)


def model_overrides(composed: ComposedConfig, checkpoint_config) -> tuple[dict[str, Any], dict[str, str]]:
    """(ModelConfig overrides, ignored `arch.*` keys with why) of the config's `arch` block
    for a model whose decoder settings come from the TRM checkpoint. The encoder settings,
    `halt_exploration_prob`, `loss.kl_weight` and `max_demos` apply; a decoder setting that
    differs from the checkpoint's is ignored with both values named (the weights were
    trained at the checkpoint's, and the origin loader would not say so)."""
    from etrm.config.importer import DECODER_SETTINGS, ENCODER_KEYS

    arch = dict(composed.doc.get("arch") or {})
    overrides: dict[str, Any] = {k: arch.pop(k) for k in (*ENCODER_KEYS, "halt_exploration_prob") if k in arch}
    loss = arch.pop("loss", None) or {}
    if "kl_weight" in loss:
        overrides["kl_weight"] = float(loss["kl_weight"])
    if composed.doc.get("max_demos") is not None:
        overrides["max_demos"] = int(composed.doc["max_demos"])
    ignored = {}
    for key, value in arch.items():
        saved = getattr(checkpoint_config, key, None)
        if key in (*DECODER_SETTINGS, "forward_dtype") and value != saved:
            ignored[f"arch.{key}"] = (
                f"{value!r} in the config, {saved!r} in the TRM checkpoint: the decoder runs at "
                "the checkpoint's (--forward-dtype chooses the dtype)"
            )
        elif key not in (*DECODER_SETTINGS, "forward_dtype"):
            ignored[f"arch.{key}"] = (
                "not a setting of etrm's ETRM" if key != "name" else "etrm's ETRM runs (or --model-code)"
            )
    return overrides, ignored
