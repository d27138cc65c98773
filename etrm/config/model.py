"""Typed, validated model configuration.

A `ModelConfig` records everything needed to rebuild a model and round-trips
through dicts, JSON and YAML. Unknown keys are errors; reading a trainer's
`all_config.yaml` (which carries non-model keys) is the importer's job, with
an explicit ignore list (see `etrm.config.importer`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

MODEL_TYPES = ("trm", "etrm", "etrmtrm")
ENCODER_TYPES = ("standard", "variational")
POOLING_METHODS = ("mean", "attention", "weighted")
NORM_STYLES = ("post", "pre")
POS_ENCODINGS = ("rope", "learned", "none")
FORWARD_DTYPES = ("float32", "bfloat16", "float16", "float64")  # float64: golden records, rounding measurements


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message says which."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of TRM, ETRM or ETRMTRM. Defaults are the official ARC-AGI-1 TRM."""

    model_type: str = "trm"
    seq_len: int = 900
    vocab_size: int = 12
    num_puzzle_identifiers: int = 1
    puzzle_emb_ndim: int = 512  # TRM only (0 for the encoder models)
    puzzle_emb_len: int = 16
    hidden_size: int = 512
    num_heads: int = 8
    expansion: float = 4.0
    L_layers: int = 2
    H_cycles: int = 3
    L_cycles: int = 4
    pos_encodings: str = "rope"
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    halt_max_steps: int = 16
    halt_exploration_prob: float = 0.1
    forward_dtype: str = "float32"
    # Demo encoder (ETRM / ETRMTRM); names follow the origin ETRM config.
    encoder_type: str = "standard"
    encoder_num_layers: int = 2
    encoder_set_layers: int = 1
    encoder_pooling_method: str = "mean"
    encoder_norm_style: str = "post"
    max_demos: int = 10
    kl_weight: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("model_type", self.model_type, MODEL_TYPES)
        _check_choice("encoder_type", self.encoder_type, ENCODER_TYPES)
        _check_choice("encoder_pooling_method", self.encoder_pooling_method, POOLING_METHODS)
        _check_choice("encoder_norm_style", self.encoder_norm_style, NORM_STYLES)
        _check_choice("pos_encodings", self.pos_encodings, POS_ENCODINGS)
        _check_choice("forward_dtype", self.forward_dtype, FORWARD_DTYPES)
        for name in (
            "seq_len",
            "vocab_size",
            "num_puzzle_identifiers",
            "hidden_size",
            "num_heads",
            "L_layers",
            "H_cycles",
            "L_cycles",
            "halt_max_steps",
            "puzzle_emb_len",
            "encoder_num_layers",
            "encoder_set_layers",
            "max_demos",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if (self.hidden_size // self.num_heads) % 2 and self.pos_encodings == "rope":
            raise ConfigError(f"RoPE needs an even head dim, got {self.hidden_size // self.num_heads}")
        if self.puzzle_emb_ndim < 0 or self.puzzle_emb_ndim > self.puzzle_emb_len * self.hidden_size:
            raise ConfigError(
                f"puzzle_emb_ndim {self.puzzle_emb_ndim} must be in 0..puzzle_emb_len*hidden_size "
                f"({self.puzzle_emb_len * self.hidden_size})"
            )
        if not 0.0 <= self.halt_exploration_prob <= 1.0:
            raise ConfigError(f"halt_exploration_prob must be in [0, 1], got {self.halt_exploration_prob}")
        if self.expansion <= 0 or self.kl_weight < 0:
            raise ConfigError("expansion must be > 0 and kl_weight >= 0")

    # --- derived -------------------------------------------------------------------------
    @property
    def uses_encoder(self) -> bool:
        return self.model_type in ("etrm", "etrmtrm")

    @property
    def full_seq_len(self) -> int:
        """Decoder sequence length: prefix tokens plus the grid canvas."""
        return self.puzzle_emb_len + self.seq_len

    @property
    def swiglu_width(self) -> int:
        """SwiGLU inner width: round(expansion * hidden * 2/3) up to a multiple of 256."""
        from etrm.layers import swiglu_width

        return swiglu_width(self.hidden_size, self.expansion)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)

    # --- serialisation -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> ModelConfig:
        return from_known_keys(cls, data, source, "model config")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        return cls.from_dict(json.loads(text), source="JSON")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=True)

    @classmethod
    def from_yaml(cls, text: str) -> ModelConfig:
        return cls.from_dict(yaml.safe_load(text) or {}, source="YAML")

    @classmethod
    def load(cls, path: str | Path) -> ModelConfig:
        """Read a config file of ours (.json, .yaml or .yml)."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys")
        return cls.from_dict(data, source=str(path))


def from_known_keys(cls: type, data: Mapping[str, Any], source: str, kind: str) -> Any:
    """cls(**data) for a config dataclass, with a key it does not know named as an error."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown {kind} key(s) {unknown}; valid keys: {sorted(known)}")
    return cls(**data)


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; valid: {', '.join(choices)}")


def tiny_config(model_type: str = "trm", **overrides: Any) -> ModelConfig:
    """The tiny configuration used by tests and fixtures (DESIGN.md section 9): a 10x10 canvas."""
    base = dict(
        model_type=model_type,
        seq_len=100,
        hidden_size=32,
        num_heads=2,
        expansion=2.0,
        L_layers=1,
        H_cycles=2,
        L_cycles=2,
        puzzle_emb_len=4,
        halt_max_steps=3,
        num_puzzle_identifiers=16,
        encoder_num_layers=1,
        max_demos=4,
        puzzle_emb_ndim=32 if model_type == "trm" else 0,
    )
    base.update(overrides)
    return ModelConfig(**base)


def official_arc1_config(**overrides: Any) -> ModelConfig:
    """The official ARC-AGI-1 TRM recipe (H 3, L 4: not the public config file's L 6)."""
    base = dict(model_type="trm", num_puzzle_identifiers=876_406, forward_dtype="bfloat16")
    base.update(overrides)
    return ModelConfig(**base)


__all__ = ["ModelConfig", "ConfigError", "tiny_config", "official_arc1_config"]
