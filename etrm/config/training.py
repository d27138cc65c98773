"""Training settings (DESIGN.md section 7): the optimiser, schedule, clipping, freezing and EMA
values of a run, validated when made, and the official ARC-AGI-1 TRM recipe. The trainer that
applies them is etrm.training."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from etrm.config import ConfigError, from_known_keys

OPTIMIZER_LAYOUTS = ("single", "split")


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings. The defaults are the official recipe's optimiser values with
    EMA and clipping off; `official_trm_recipe()` is the official ARC-AGI-1 run."""

    lr: float = 1e-4
    encoder_lr_scale: float = 1.0  # encoder lr = lr * encoder_lr_scale
    weight_decay: float = 0.1
    encoder_weight_decay_scale: float = 1.0  # the origin ETRM runs used 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 2000
    total_steps: int = 518_071  # only matters when lr_min_ratio < 1 (cosine horizon)
    lr_min_ratio: float = 1.0
    grad_clip_norm: float | None = None
    freeze_decoder_steps: int = 0  # the first N steps: no update and no decay of the decoder
    freeze_encoder_steps: int = 0
    ema_rate: float | None = None
    global_batch_size: int = 768
    puzzle_emb_lr: float = 1e-2
    puzzle_emb_weight_decay: float = 0.1
    optimizer_layout: str = "single"  # "single": one AdamATan2, a group per part; "split": one per part
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        for name in (
            "lr",
            "encoder_lr_scale",
            "weight_decay",
            "encoder_weight_decay_scale",
            "puzzle_emb_lr",
            "puzzle_emb_weight_decay",
        ):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"training config: {name} must be a finite number >= 0, got {value!r}")
        for name in ("warmup_steps", "freeze_decoder_steps", "freeze_encoder_steps", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"training config: {name} must be an integer >= 0, got {value!r}")
        for name in ("total_steps", "global_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"training config: {name} must be a positive integer, got {value!r}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"training config: betas must be two numbers in [0, 1), got {self.betas!r}")
        if not 0.0 <= self.lr_min_ratio <= 1.0:
            raise ConfigError(f"training config: lr_min_ratio must be in [0, 1], got {self.lr_min_ratio!r}")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            raise ConfigError(f"training config: grad_clip_norm must be > 0 or None (off), got {self.grad_clip_norm!r}")
        if self.ema_rate is not None and not 0.0 < self.ema_rate < 1.0:
            raise ConfigError(f"training config: ema_rate must be in (0, 1) or None (off), got {self.ema_rate!r}")
        if self.optimizer_layout not in OPTIMIZER_LAYOUTS:
            raise ConfigError(
                f"training config: optimizer_layout must be one of {OPTIMIZER_LAYOUTS}, got {self.optimizer_layout!r}"
            )

    @property
    def encoder_lr(self) -> float:
        return self.lr * self.encoder_lr_scale

    @property
    def encoder_weight_decay(self) -> float:
        return self.weight_decay * self.encoder_weight_decay_scale

    def replace(self, **changes: Any) -> TrainingConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["betas"] = list(self.betas)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "training config") -> TrainingConfig:
        return from_known_keys(cls, data, source, "training config")


def official_trm_recipe(**overrides: Any) -> TrainingConfig:
    """The official ARC-AGI-1 TRM run (DESIGN.md section 4): lr 1e-4, puzzle-embedding
    sign-SGD lr 1e-2, weight decay 0.1 for both, betas (0.9, 0.95), warmup 2000, global
    batch 768, EMA 0.999, constant lr after warmup, no clipping, nothing frozen."""
    base = dict(
        lr=1e-4,
        weight_decay=0.1,
        betas=(0.9, 0.95),
        warmup_steps=2000,
        lr_min_ratio=1.0,
        global_batch_size=768,
        ema_rate=0.999,
        puzzle_emb_lr=1e-2,
        puzzle_emb_weight_decay=0.1,
        grad_clip_norm=None,
        encoder_lr_scale=1.0,
        encoder_weight_decay_scale=1.0,
    )
    base.update(overrides)
    return TrainingConfig(**base)
