"""The config saved beside a checkpoint (our `.etrm.json` metadata or a trainer's
all_config.yaml), EMA provenance, and recursion settings that differ from it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etrm.checkpoints.errors import CheckpointError
from etrm.config import ConfigError, ModelConfig
from etrm.config.importer import CONFIG_FILE, DECODER_SETTINGS, import_training_config

SIDECAR_SUFFIX = ".etrm.json"
METADATA_FORMAT = "etrm-checkpoint-metadata/1"
PROVENANCES = ("ema", "raw", "unknown")


@dataclass(frozen=True)
class CheckpointMetadata:
    """What our checkpoints record beside the weights (`<checkpoint>.etrm.json`)."""

    model_config: ModelConfig
    step: int
    is_ema: bool
    ema_rate: float | None
    etrm_version: str
    key_layout: str
    training: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": METADATA_FORMAT,
                "model_config": self.model_config.to_dict(),
                "step": self.step,
                "is_ema": self.is_ema,
                "ema_rate": self.ema_rate,
                "etrm_version": self.etrm_version,
                "key_layout": self.key_layout,
                "training": self.training,
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str, source: str | Path) -> CheckpointMetadata:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{source}: metadata is not valid JSON ({err})") from None
        expected = {"format", "model_config", "step", "is_ema", "ema_rate", "etrm_version", "key_layout", "training"}
        if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
            raise CheckpointError(f"{source}: not etrm checkpoint metadata (format {METADATA_FORMAT!r} expected)")
        if set(data) != expected:
            raise CheckpointError(
                f"{source}: metadata keys missing {sorted(expected - set(data))}, "
                f"unknown {sorted(set(data) - expected)}"
            )
        if not isinstance(data["is_ema"], bool) or not isinstance(data["step"], int):
            raise CheckpointError(f"{source}: metadata is_ema must be a bool and step an int")
        try:
            config = ModelConfig.from_dict(data["model_config"], source=f"{source} model_config")
        except (ConfigError, TypeError) as err:
            raise CheckpointError(f"{source}: {err}") from None
        return cls(
            model_config=config,
            step=data["step"],
            is_ema=data["is_ema"],
            ema_rate=data["ema_rate"],
            etrm_version=data["etrm_version"],
            key_layout=data["key_layout"],
            training=data["training"],
        )


@dataclass(frozen=True)
class SavedConfig:
    """The training config found beside a checkpoint: our metadata or a trainer's all_config.yaml."""

    source: Path
    kind: str  # "etrm metadata" | "all_config.yaml"
    model_config: ModelConfig
    ema: str  # EMA provenance of the weights: "ema" | "raw" | "unknown"
    training: dict[str, Any] = field(default_factory=dict)
    foreign_encoder: str | None = None  # an origin encoder type etrm does not implement


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_metadata(path: str | Path) -> CheckpointMetadata | None:
    """Our metadata for the checkpoint at `path`, or None when it has none."""
    meta = sidecar_path(path)
    return CheckpointMetadata.from_json(meta.read_text(), meta) if meta.is_file() else None


def find_saved_config(path: str | Path, *, config_path: str | Path | None = None) -> SavedConfig | None:
    """The config saved with a checkpoint: `config_path` if given, else our metadata
    (`<checkpoint>.etrm.json`), else `all_config.yaml` in the same folder; None if none.

    From an all_config.yaml, `ema: true` means the weights are the EMA copy: the official
    trainer saves the EMA model at each evaluation when EMA is on."""
    path = Path(path)
    if config_path is None:
        meta = read_metadata(path)
        if meta is not None:
            return SavedConfig(
                sidecar_path(path),
                "etrm metadata",
                meta.model_config,
                "ema" if meta.is_ema else "raw",
                dict(meta.training or {}),
            )
        config_path = path.parent / CONFIG_FILE
        if not config_path.is_file():
            return None
    imported = import_training_config(config_path)
    ema = {True: "ema", False: "raw"}.get(imported.ema, "unknown")
    return SavedConfig(
        Path(config_path), CONFIG_FILE, imported.model_config, ema, imported.training, imported.foreign_encoder
    )


def ema_provenance(path: str | Path) -> str:
    """ "ema", "raw" or "unknown": whether a checkpoint holds EMA weights, from its saved
    metadata or training config ONLY. Never from weight statistics: the investigation
    "confirmed" EMA from low std values, which says nothing (a raw model can have low std
    and an EMA copy high std); nothing inside the file records it."""
    saved = find_saved_config(path)
    return "unknown" if saved is None else saved.ema


def recursion_mismatches(model_config: ModelConfig, saved: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """DECODER_SETTINGS that differ: name -> (model value, saved value)."""
    return {
        name: (getattr(model_config, name), getattr(saved, name))
        for name in DECODER_SETTINGS
        if getattr(model_config, name) != getattr(saved, name)
    }


def _mismatch_message(path: Path, saved: SavedConfig, mismatches: dict[str, tuple[Any, Any]]) -> str:
    parts = "; ".join(f"{name}: model {m!r}, checkpoint {s!r}" for name, (m, s) in mismatches.items())
    return (
        f"{path}: recursion settings differ from the checkpoint's saved config ({saved.source}): {parts}. "
        "The weights were trained with the checkpoint's settings; build the model with them"
    )
