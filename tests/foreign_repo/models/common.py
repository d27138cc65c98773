"""Initialisation and config helpers (the official `models/common.py`, pydantic replaced)."""

import dataclasses

import torch


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    with torch.no_grad():
        return torch.nn.init.trunc_normal_(tensor, std=std, a=lower * std, b=upper * std)


def config_from_dict(cls, values: dict):
    """Like the official pydantic config classes: unknown keys are ignored, missing required ones are an error."""
    fields = {f.name for f in dataclasses.fields(cls)}
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    missing = sorted(required - set(values))
    if missing:
        raise ValueError(f"{cls.__name__}: missing fields {missing}")
    return cls(**{k: v for k, v in values.items() if k in fields})
