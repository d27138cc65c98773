"""Controlled runs of a model that several checks share, all through `etrm.interface`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from etrm.interface import TRMInterface, as_interface


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode (fixed number of ACT steps, no sampling) restored afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def act_step_losses(
    model: TRMInterface, batch: dict[str, torch.Tensor], steps: int, seed: int = 0
) -> list[torch.Tensor]:
    """The losses of `steps` consecutive training-mode ACT steps on one batch, each with its
    graph. Step 1 resets every sample; no sample is let halt afterwards, so steps 2+ have no
    resets (where a cached or carried context would starve the encoder)."""
    model = as_interface(model)
    losses = []
    with model.mode(training=True), torch.random.fork_rng(), torch.enable_grad():
        torch.manual_seed(seed)
        carry = model.initial_carry(batch)
        for _ in range(steps):
            step = model.step(carry, batch)
            carry = model.without_resets(step.carry)
            losses.append(step.loss)
    return losses


def episode_loss(model: TRMInterface, batch: dict[str, torch.Tensor], steps: int | None = None) -> float:
    """Summed loss of the first `steps` evaluation-mode ACT steps (default: the whole
    episode, halt_max_steps), without gradient."""
    model = as_interface(model)
    total = 0.0
    with model.mode(training=False), torch.no_grad():
        carry = model.initial_carry(batch)
        for _ in range(min(steps or model.halt_max_steps, model.halt_max_steps)):
            step = model.step(carry, batch)
            carry, total = step.carry, total + step.loss.item()
    return total


def context_of(model: TRMInterface, batch: dict[str, torch.Tensor], known: torch.Tensor | None = None) -> torch.Tensor:
    """The context the encoder gives the decoder on a sample's first ACT step (no gradient), or
    `known` when the caller has it: several checks read the contexts of one batch, and at the
    official width each `first_context` costs seconds, so a suite fixture computes them once."""
    return as_interface(model).first_context(batch) if known is None else known


def with_demos(
    batch: dict[str, torch.Tensor], inputs: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
) -> dict[str, torch.Tensor]:
    """`batch` with other demo slots (everything else unchanged)."""
    return {**batch, "demo_inputs": inputs, "demo_labels": labels, "demo_mask": mask}
