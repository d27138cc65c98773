"""Exponential moving average of a model's parameters (the official trainer's EMA, made safe).

`shadow = rate * shadow + (1 - rate) * param` after every optimiser step; evaluation
and checkpoints use a copy of the model carrying the shadow weights. Two differences
from the official `EMAHelper`:

* every parameter is tracked, whether or not it requires grad when `register()` runs,
  so a parameter frozen at registration (a frozen decoder) and unfrozen later does
  not crash `update()` (the official helper has no shadow for it);
* buffers (H_init, L_init, the puzzle embedding table) are never averaged: copies
  take them raw from the tracked model.

Names are those of the unwrapped module (no `_orig_mod.` / `module.`), so a shadow
taken from a compiled or DDP-wrapped model applies to a plain one and back.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from etrm.checkpoints import unwrap_module


class EMA:
    """EMA of every parameter of `model` at `rate` (official recipe: 0.999)."""

    def __init__(self, model: nn.Module, rate: float):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"EMA rate must be a number in [0, 1], got {rate!r}")
        self.model = model
        self.rate = float(rate)
        self.shadow: dict[str, torch.Tensor] = {}
        self.num_updates = 0

    def _params(self, model: nn.Module | None = None) -> dict[str, nn.Parameter]:
        return dict(unwrap_module(self.model if model is None else model).named_parameters())

    def register(self) -> None:
        """Shadow = the model's current parameters (call after loading pretrained weights)."""
        self.shadow = {name: p.detach().clone() for name, p in self._params().items()}
        self.num_updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """One EMA step over every parameter, trainable or frozen."""
        if not self.shadow:
            raise RuntimeError("EMA.update() before register(): call ema.register() once the weights are loaded")
        params = self._params()
        self._check_names(params, "the tracked model")
        for name, param in params.items():
            # mul_ then add_ is the official (1 - mu) * p + mu * s, bit for bit.
            self.shadow[name].mul_(self.rate).add_(param.detach(), alpha=1.0 - self.rate)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the shadow into `model`'s parameters. When `model` is another instance of the
        same architecture, its buffers also get the tracked model's buffers, raw."""
        if not self.shadow:
            raise RuntimeError("EMA.copy_to() before register()")
        params = self._params(model)
        self._check_names(params, type(unwrap_module(model)).__name__)
        for name, param in params.items():
            param.copy_(self.shadow[name])
        target = unwrap_module(model)
        source = unwrap_module(self.model)
        if target is not source:
            source_buffers = dict(source.named_buffers())
            for name, buffer in target.named_buffers():
                if name in source_buffers:
                    buffer.copy_(source_buffers[name])
        return model

    def ema_copy(self, model: nn.Module | None = None) -> nn.Module:
        """A deep copy of `model` (default: the tracked one) carrying the shadow weights."""
        return self.copy_to(copy.deepcopy(self.model if model is None else model))

    def state_dict(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "num_updates": self.num_updates,
            "shadow": {name: t.clone() for name, t in self.shadow.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved EMA; its parameter names and shapes must match the tracked model."""
        missing = {"rate", "num_updates", "shadow"} - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)}")
        params = self._params()
        shadow = state["shadow"]
        absent, extra = sorted(set(params) - set(shadow)), sorted(set(shadow) - set(params))
        if absent or extra:
            raise KeyError(f"EMA state does not match the model: missing {absent}, unexpected {extra}")
        bad = [
            f"{n}: {tuple(shadow[n].shape)} vs {tuple(p.shape)}"
            for n, p in params.items()
            if shadow[n].shape != p.shape
        ]
        if bad:
            raise ValueError(f"EMA state shapes differ from the model: {'; '.join(bad)}")
        self.rate = float(state["rate"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {n: shadow[n].detach().clone().to(device=p.device, dtype=p.dtype) for n, p in params.items()}

    def _check_names(self, params: dict[str, nn.Parameter], what: str) -> None:
        if params.keys() != self.shadow.keys():
            absent, extra = sorted(set(params) - set(self.shadow)), sorted(set(self.shadow) - set(params))
            raise KeyError(
                f"EMA shadow does not match {what}: parameters without shadow {absent}, "
                f"shadow without parameter {extra}"
            )


__all__ = ["EMA"]
