"""Controlled runs of a model that several checks share."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode (fixed number of ACT steps, no sampling) restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def encoder_of(head: nn.Module) -> nn.Module:
    model = getattr(head, "model", head)
    if not hasattr(model, "encoder"):
        raise TypeError(f"{type(model).__name__} has no demo encoder: the check needs an ETRM or ETRMTRM model")
    return model.encoder


def decoder_of(head: nn.Module) -> nn.Module:
    return getattr(head, "model", head).inner


def act_step_losses(head: nn.Module, batch: dict[str, torch.Tensor], steps: int,
                    seed: int = 0) -> list[tuple[torch.Tensor, dict]]:
    """`steps` consecutive training-mode ACT steps on one batch, keeping each step's graph.
    Step 1 resets every sample; no sample is let halt afterwards, so steps 2+ have no
    resets (where a cached or carried context would starve the encoder)."""
    results = []
    was_training = head.training
    head.train()
    try:
        with torch.random.fork_rng(), torch.enable_grad():
            torch.manual_seed(seed)
            carry = head.initial_carry(batch)
            for _ in range(steps):
                carry, loss, _metrics, outputs, _ = head(carry, batch)
                carry.halted = torch.zeros_like(carry.halted)
                results.append((loss, outputs))
    finally:
        head.train(was_training)
    return results


def context_of(head: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The context the encoder gives the decoder on a sample's first ACT step (no gradient).
    The encoder is called directly so that a malformed context is reported, not crashed on."""
    encoder = encoder_of(head)
    with eval_mode(encoder), torch.no_grad():
        return encoder(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]).context
