"""Reading and writing a trainer's `all_config.yaml` (official TRM and origin ETRM layouts).

The official TRM trainer dumps its whole `PretrainConfig` beside its checkpoints: the
model settings nested under `arch:` (the loss head under `arch.loss`), optimiser and
schedule at the top level, and keys that describe the run rather than the model
(names, paths, evaluators). The origin ETRM trainer adds its encoder settings to
`arch` and its own training keys at the top.

`import_training_config` sorts every key into exactly one of:

* a `ModelConfig` field (`ImportedConfig.model_config`);
* a training hyper-parameter (`ImportedConfig.training`, official key names, for the
  H4 audit);
* a key ignored on purpose, listed with its reason in `IGNORED_TOP_KEYS` /
  `IGNORED_ARCH_KEYS` (kept in `ImportedConfig.ignored` for provenance);
* a key accepted only at the value etrm implements (`PINNED_ARCH_KEYS`, e.g.
  `mlp_t: False`): any other value is an error, because the weights would belong to
  an architecture etrm does not have.

Any other key is an error naming it: validation is never loosened to read a file.
`write_training_config` writes the same layout (plus an `etrm:` section with the data
shape the official file keeps elsewhere), so our checkpoints carry an `all_config.yaml`
that this importer and the official tools read. The key tables live in
`etrm.config.trainer_keys`; this module re-exports the ones its importers use (`__all__`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from etrm import __version__
from etrm.config import ENCODER_TYPES, ConfigError, ModelConfig
from etrm.config.trainer_keys import (
    ARCH_MODEL_KEYS,
    ARCH_NAMES,
    DECODER_SETTINGS,
    ENCODER_KEYS,
    ETRM_SECTION_KEYS,
    IGNORED_ARCH_KEYS,
    IGNORED_LOSS_KEYS,
    IGNORED_TOP_KEYS,
    LOSS_HEAD_NAME,
    LOSS_TYPE,
    MODEL_TYPE_OF_ARCH,
    PINNED_ARCH_KEYS,
    TRAINING_ALIASES,
    TRAINING_KEYS,
)

CONFIG_FILE = "all_config.yaml"

_INTERPOLATION = re.compile(r"^\$\{\.(\w+)\}$")


@dataclass(frozen=True)
class ImportedConfig:
    """A trainer's all_config.yaml, sorted: model, training hyper-parameters, ignored keys."""

    path: Path
    arch_name: str
    model_config: ModelConfig
    training: dict[str, Any]  # official key names (see TRAINING_KEYS)
    ignored: dict[str, Any]  # dotted key -> value, kept for provenance
    # An origin encoder etrm does not implement (hybrid_variational, lpn_var): the decoder
    # settings and the training recipe still read, but no etrm model can be built from it.
    foreign_encoder: str | None = None

    def recursion_settings(self) -> dict[str, Any]:
        return {name: getattr(self.model_config, name) for name in DECODER_SETTINGS}

    @property
    def ema(self) -> bool | None:
        """Whether the run kept an EMA of its weights (None when the file does not say)."""
        return self.training.get("ema")


def import_training_config(path: str | Path, *, model_type: str | None = None, **overrides: Any) -> ImportedConfig:
    """Read an official or origin `all_config.yaml` (or one we wrote).

    `model_type` overrides the type derived from `arch.name` (for a renamed model
    class); `overrides` replace ModelConfig fields the file cannot know, such as
    `num_puzzle_identifiers` or `seq_len` (the official file leaves them to the data).
    """
    path = Path(path)
    doc = _read_yaml(path)
    arch = doc.get("arch")
    if not isinstance(arch, Mapping):
        raise ConfigError(
            f"{path}: no 'arch' mapping; an official all_config.yaml nests the model settings under arch:"
        )
    arch = _resolve_interpolations(path, dict(arch))

    arch_name = arch.get("name")
    if model_type is None:
        if arch_name not in MODEL_TYPE_OF_ARCH:
            raise ConfigError(
                f"{path}: arch.name {arch_name!r} is not a known model class "
                f"({', '.join(MODEL_TYPE_OF_ARCH)}); pass model_type= to read it anyway"
            )
        model_type = MODEL_TYPE_OF_ARCH[arch_name]

    model: dict[str, Any] = {"model_type": model_type}
    training: dict[str, Any] = {}
    ignored: dict[str, Any] = {}
    for key, value in arch.items():
        dotted = f"arch.{key}"
        if key == "name":
            continue
        if key == "loss":
            _sort_loss(path, value, model, training, ignored)
        elif key in ARCH_MODEL_KEYS or key in ENCODER_KEYS:
            model[key] = value
        elif key == "freeze_encoder":
            training[key] = _coerce(path, dotted, key, value)
        elif key in IGNORED_ARCH_KEYS:
            ignored[dotted] = value
        elif key in PINNED_ARCH_KEYS:
            expected, why = PINNED_ARCH_KEYS[key]
            if value != expected:
                raise ConfigError(f"{path}: {dotted} = {value!r} is not supported ({why}); etrm needs {expected!r}")
            ignored[dotted] = value
        else:
            raise ConfigError(
                f"{path}: unknown key {dotted!r}: not a model setting ({', '.join(ARCH_MODEL_KEYS + ENCODER_KEYS)}), "
                f"nor one of the known ignored keys ({', '.join(sorted(IGNORED_ARCH_KEYS) + sorted(PINNED_ARCH_KEYS))})"
            )

    for key, value in doc.items():
        if key == "arch":
            continue
        if key == "etrm":
            model.update(_etrm_section(path, value))
        elif key == "max_demos":
            model[key] = value
        elif key in TRAINING_KEYS:
            training[key] = _coerce(path, key, key, value)
        elif key in IGNORED_TOP_KEYS:
            ignored[key] = value
        else:
            raise ConfigError(
                f"{path}: unknown key {key!r}: not a training hyper-parameter ({', '.join(sorted(TRAINING_KEYS))}), "
                f"nor one of the known ignored keys ({', '.join(sorted(IGNORED_TOP_KEYS))})"
            )

    foreign = None
    if model.get("encoder_type") is not None and model["encoder_type"] not in ENCODER_TYPES:
        foreign = model.pop("encoder_type")
        ignored["arch.encoder_type"] = foreign
    if arch.get("recurrent_encoder_type") is not None:  # the origin ETRMTRM's own recurrent encoders
        foreign = str(arch["recurrent_encoder_type"])
    if "expansion" in model and isinstance(model["expansion"], int):
        model["expansion"] = float(model["expansion"])
    model.update(overrides)
    try:
        config = ModelConfig.from_dict(model, source=str(path))
    except TypeError as err:  # a wrongly typed value the dataclass could not take
        raise ConfigError(f"{path}: {err}") from None
    except ConfigError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(str(path)) else f"{path}: {message}") from None
    return ImportedConfig(
        path=path,
        arch_name=str(arch_name),
        model_config=config,
        training=training,
        ignored=ignored,
        foreign_encoder=foreign,
    )


def training_config_text(model_config: ModelConfig, training: Mapping[str, Any] | Any | None = None) -> str:
    """The all_config.yaml text `write_training_config` writes (see there)."""
    hparams = normalize_training_hparams(training)
    arch: dict[str, Any] = {
        "name": ARCH_NAMES[model_config.model_type],
        "loss": {"name": LOSS_HEAD_NAME, "loss_type": hparams.pop("loss_type", LOSS_TYPE)},
        "H_layers": 0,
        **{key: expected for key, (expected, _) in PINNED_ARCH_KEYS.items() if not key.startswith("encoder_")},
        **{key: getattr(model_config, key) for key in ARCH_MODEL_KEYS},
    }
    # Encoder settings are written for every model type (the official trainer ignores
    # arch keys its model does not use), so the file round-trips to the same ModelConfig.
    arch.update({key: getattr(model_config, key) for key in ENCODER_KEYS})
    arch["loss"]["kl_weight"] = model_config.kl_weight
    doc: dict[str, Any] = {"max_demos": model_config.max_demos}
    if "freeze_encoder" in hparams:
        arch["freeze_encoder"] = hparams.pop("freeze_encoder")
    doc.update(
        arch=arch,
        **hparams,
        etrm={
            "seq_len": model_config.seq_len,
            "vocab_size": model_config.vocab_size,
            "num_puzzle_identifiers": model_config.num_puzzle_identifiers,
            "version": __version__,
        },
    )
    return yaml.safe_dump(doc, sort_keys=True)


def write_training_config(
    path: str | Path, model_config: ModelConfig, training: Mapping[str, Any] | Any | None = None
) -> Path:
    """Write an all_config.yaml in the official layout (`arch:` nesting, official key names).

    `training` holds hyper-parameters under official names (TRAINING_KEYS) or etrm's
    TrainingConfig names (`warmup_steps`, `betas`, `freeze_encoder_steps`, `ema_rate` with
    None meaning EMA off, `grad_clip_norm` None meaning off); a dataclass instance is read
    with `dataclasses.asdict`. Unknown keys are errors. The file is replaced atomically.
    """
    path = Path(path)
    text = training_config_text(model_config, training)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def normalize_training_hparams(training: Mapping[str, Any] | Any | None) -> dict[str, Any]:
    """Training hyper-parameters under official names, validated (see write_training_config)."""
    if training is None:
        return {}
    if dataclasses.is_dataclass(training) and not isinstance(training, type):
        training = dataclasses.asdict(training)
    if not isinstance(training, Mapping):
        raise ConfigError(f"training hyper-parameters must be a mapping or a dataclass, got {type(training).__name__}")
    out: dict[str, Any] = {}
    for key, value in training.items():
        if key == "betas":
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise ConfigError(f"training key 'betas' must be a pair (beta1, beta2), got {value!r}")
            out["beta1"], out["beta2"] = (_coerce("training", "beta1", "beta1", v) for v in value)
        elif key == "ema_rate" and value is None:
            out["ema"] = False  # etrm's TrainingConfig: ema_rate None = EMA off
        elif key == "grad_clip_norm" and value is None:
            out["grad_clip_norm"] = 0.0  # the origin trainer's "off"
        else:
            name = TRAINING_ALIASES.get(key, key)
            if name not in TRAINING_KEYS:
                raise ConfigError(
                    f"unknown training key {key!r}; known: {', '.join(sorted(set(TRAINING_KEYS) | set(TRAINING_ALIASES) | {'betas'}))}"
                )
            out[name] = _coerce("training", name, name, value)
    if "ema_rate" in out and "ema" not in out:
        out["ema"] = True  # etrm's TrainingConfig: a rate means EMA on
    return out


# --- helpers ----------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: training config not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys, got {type(doc).__name__}")
    return doc


def _resolve_interpolations(path: Path, arch: dict[str, Any]) -> dict[str, Any]:
    """Resolve hydra's sibling references (`puzzle_emb_ndim: ${.hidden_size}`) left in a raw file."""
    for key, value in arch.items():
        if isinstance(value, str) and "${" in value:
            match = _INTERPOLATION.match(value)
            if not match or match.group(1) not in arch:
                raise ConfigError(f"{path}: arch.{key} = {value!r} is an interpolation this importer cannot resolve")
            arch[key] = arch[match.group(1)]
    return arch


def _sort_loss(path: Path, loss: Any, model: dict, training: dict, ignored: dict) -> None:
    if not isinstance(loss, Mapping):
        raise ConfigError(f"{path}: arch.loss must be a mapping (name, loss_type, ...), got {loss!r}")
    for key, value in loss.items():
        dotted = f"arch.loss.{key}"
        if key == "kl_weight":
            model[key] = value
        elif key == "loss_type":
            training[key] = _coerce(path, dotted, key, value)
        elif key in IGNORED_LOSS_KEYS:
            ignored[dotted] = value
        else:
            raise ConfigError(
                f"{path}: unknown key {dotted!r}; known: kl_weight, loss_type, {', '.join(IGNORED_LOSS_KEYS)}"
            )


def _etrm_section(path: Path, section: Any) -> dict[str, Any]:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{path}: the 'etrm' section must be a mapping, got {section!r}")
    unknown = sorted(set(section) - set(ETRM_SECTION_KEYS))
    if unknown:
        raise ConfigError(
            f"{path}: unknown key(s) {['etrm.' + k for k in unknown]}; known: {', '.join(ETRM_SECTION_KEYS)}"
        )
    return {k: v for k, v in section.items() if k != "version"}


def _coerce(source: Any, dotted: str, key: str, value: Any) -> Any:
    """Check a training value's type; numbers written as strings ('1e-4', which YAML 1.1
    reads as a string) become floats; an int is accepted where a float is expected."""
    types = TRAINING_KEYS[key]
    if value is None and type(None) in types:
        return None
    if float in types and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    if int in types and isinstance(value, int) and not isinstance(value, bool):
        return value
    if bool in types and isinstance(value, bool):
        return value
    if str in types and isinstance(value, str):
        return value
    wanted = " or ".join("null" if t is type(None) else t.__name__ for t in types)
    raise ConfigError(f"{source}: {dotted} must be {wanted}, got {value!r}")


__all__ = [
    "ARCH_NAMES",
    "CONFIG_FILE",
    "IGNORED_ARCH_KEYS",
    "IGNORED_TOP_KEYS",
    "ImportedConfig",
    "PINNED_ARCH_KEYS",
    "DECODER_SETTINGS",
    "TRAINING_KEYS",
    "import_training_config",
    "normalize_training_hparams",
    "training_config_text",
    "write_training_config",
]
