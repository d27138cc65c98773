"""Running a model for evaluation: full ACT episodes over a dataset, scored by an evaluator.

In evaluation mode every sample runs exactly `halt_max_steps` ACT steps (the Q head
does not stop it early), so one episode is `halt_max_steps` calls on the same batch
and the last call's outputs are the answers, as in the official evaluation loop.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

# What an evaluator is given per batch: the answer tokens and the halting confidence.
EVALUATOR_OUTPUT_KEYS = ("preds", "q_halt_logits")


class Evaluator(Protocol):
    """The evaluator interface `evaluate` drives (`etrm.evaluation.ArcEvaluator`)."""

    def begin_round(self) -> None: ...

    def update(self, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> None: ...

    def result(self, save_dir: str | Path | None = None) -> Any: ...


def run_episode(head: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run `batch` through `halt_max_steps` ACT steps in eval mode, without autograd, and
    return the final step's outputs (logits, preds, q_halt_logits, ...; the encoder's
    context for ETRM models). The head's training/eval mode is restored afterwards."""
    device = next(head.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    max_steps = head.config.halt_max_steps
    was_training = head.training
    head.eval()
    try:
        with torch.inference_mode():
            carry = head.initial_carry(batch)
            for _ in range(max_steps):
                carry, _, _, outputs, all_halted = head(carry, batch)
    finally:
        head.train(was_training)
    if not all_halted:  # eval-mode ACT halts every sample exactly at halt_max_steps
        raise RuntimeError(f"after halt_max_steps={max_steps} evaluation steps some samples have not halted "
                           f"(steps {carry.steps.tolist()}): the model's evaluation-mode halting is broken")
    return outputs


def evaluate(head: nn.Module, dataset: Iterable[Mapping[str, torch.Tensor]], evaluator: Evaluator, *,
             progress: bool = True, max_batches: int | None = None, save_dir: str | Path | None = None) -> Any:
    """Score `head` on every batch of `dataset` (test-mode iteration) with a fresh round of
    `evaluator`; returns `evaluator.result(save_dir)` (an `EvaluationResult`; None on
    distributed ranks other than 0). `max_batches` stops early, for quick checks."""
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be positive or None, got {max_batches}")
    try:
        total = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    evaluator.begin_round()
    for batch in tqdm(islice(dataset, max_batches), total=total, desc="evaluate", disable=not progress):
        outputs = run_episode(head, batch)
        evaluator.update(batch, {k: outputs[k].cpu() for k in EVALUATOR_OUTPUT_KEYS})
    return evaluator.result(save_dir)


__all__ = ["EVALUATOR_OUTPUT_KEYS", "Evaluator", "evaluate", "run_episode"]
