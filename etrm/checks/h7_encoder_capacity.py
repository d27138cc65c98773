"""Hypothesis 7: is the encoder architecture too weak?

A useful encoder gives different contexts for different tasks (investigation Test 7.2:
"if outputs are nearly identical, the encoder isn't learning"), closer contexts for
augmentations of one task than for different tasks, and can be trained to tell two
transformation rules apart from demonstrations alone.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from etrm.checks.probes import context_of, eval_mode
from etrm.checks.result import CheckResult
from etrm.interface import TRMInterface, as_interface

H = "hypothesis7"
# Contexts of different tasks whose spread is below this fraction of their RMS are "nearly identical".
MIN_RELATIVE_SPREAD = 1e-2
# Rule-separation accuracy on held-out tasks that counts as "can separate" (chance is 0.5).
MIN_RULE_ACCURACY = 0.9


def task_ids_of(batch: dict[str, torch.Tensor], identifiers: list[str]) -> list[str]:
    """Base task id of each sample, from the dataset's identifier names (`task|||t..|||..`)."""
    from etrm.data.grids import parse_augmentation_name

    return [parse_augmentation_name(identifiers[int(i)])[0] for i in batch["puzzle_identifiers"]]


def _pairwise(ctx: torch.Tensor) -> torch.Tensor:
    flat = ctx.float().flatten(1)
    return torch.cdist(flat, flat)


def check_context_varies_across_tasks(
    model: TRMInterface, batch: dict[str, torch.Tensor], tasks: list[str], context: torch.Tensor | None = None
) -> CheckResult:
    """The per-task mean contexts spread apart. `context`: `first_context(batch)` if known."""
    model = as_interface(model)
    if why := model.missing("encoder"):
        return CheckResult.inconclusive(H, "context_varies_across_tasks", why)
    ctx = context_of(model, batch, context).float()
    distinct = sorted(set(tasks))
    if len(distinct) < 2:
        return CheckResult.inconclusive(
            H, "context_varies_across_tasks", f"the batch holds one task ({distinct}); need samples of two or more"
        )
    means = torch.stack([ctx[[i for i, t in enumerate(tasks) if t == task]].mean(0) for task in distinct])
    spread = float(means.std(0).mean() / ctx.square().mean().sqrt())
    return CheckResult.from_condition(
        H,
        "context_varies_across_tasks",
        spread > MIN_RELATIVE_SPREAD,
        f"spread of the context across {len(distinct)} tasks is {spread:.3g} of its RMS "
        f"(nearly identical below {MIN_RELATIVE_SPREAD:g})",
        {"tasks": len(distinct), "relative_spread": spread},
    )


def check_context_agrees_within_task(
    model: TRMInterface, batch: dict[str, torch.Tensor], tasks: list[str], context: torch.Tensor | None = None
) -> CheckResult:
    """Mean distance between contexts of one task's augmentations vs between tasks (< 1 passes).
    `context`: `first_context(batch)` if known."""
    model = as_interface(model)
    if why := model.missing("encoder"):
        return CheckResult.inconclusive(H, "context_agrees_within_task", why)
    ctx = context_of(model, batch, context)
    dist = _pairwise(ctx)
    same = torch.tensor([[a == b for b in tasks] for a in tasks])
    off_diag = ~torch.eye(len(tasks), dtype=torch.bool)
    within, across = dist[same & off_diag], dist[~same]
    if within.numel() == 0 or across.numel() == 0:
        return CheckResult.inconclusive(
            H,
            "context_agrees_within_task",
            "need two augmentations of one task and two different tasks in the batch",
            {"samples": len(tasks)},
        )
    ratio = float(within.mean() / across.mean().clamp_min(1e-12))
    return CheckResult.from_condition(
        H,
        "context_agrees_within_task",
        ratio < 1.0,
        f"mean context distance within a task's augmentations is {ratio:.2f}x the distance between tasks "
        f"({len(set(tasks))} tasks, {len(tasks)} samples; below 1 passes)",
        {"within_over_across": ratio, "within": float(within.mean()), "across": float(across.mean())},
    )


# --- rule separation ------------------------------------------------------------------------

RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda g: g,
    "paint-grey": lambda g: np.where(g > 0, 5, 0),  # every object painted grey
}


def rule_tasks(num_tasks: int, num_demos: int, canvas: int, seed: int):
    """Synthetic tasks whose demos follow one of two rules; returns demo tensors and rule labels."""
    from etrm.data.grids import encode_grid

    rng = np.random.default_rng(seed)
    names = list(RULES)
    inputs = np.zeros((num_tasks, num_demos, canvas * canvas), np.int32)
    outputs = np.zeros_like(inputs)
    labels = rng.integers(0, len(names), num_tasks)
    for i, rule in enumerate(labels):
        for d in range(num_demos):
            h, w = rng.integers(2, canvas, size=2)
            grid = rng.integers(0, 10, (h, w))
            inputs[i, d] = encode_grid(grid, canvas=canvas)
            outputs[i, d] = encode_grid(RULES[names[rule]](grid), canvas=canvas)
    mask = np.ones((num_tasks, num_demos), bool)
    return torch.from_numpy(inputs), torch.from_numpy(outputs), torch.from_numpy(mask), torch.from_numpy(labels)


def check_separates_two_rules(
    encoder: nn.Module, *, steps: int = 30, batch_size: int = 16, canvas: int = 5, seed: int = 0, lr: float = 3e-3
) -> CheckResult:
    """Train `encoder` (its config must have seq_len == canvas**2) plus a linear probe on the
    mean context to tell two rules apart from 3 demos; score on held-out tasks."""
    cfg = encoder.config
    if cfg.seq_len != canvas * canvas:
        raise ValueError(f"encoder seq_len {cfg.seq_len} does not match the {canvas}x{canvas} rule tasks")
    train, test = rule_tasks(256, 3, canvas, seed), rule_tasks(64, 3, canvas, seed + 1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        probe = nn.Linear(cfg.hidden_size, 2)
        params = [p for p in encoder.parameters() if p.requires_grad] + list(probe.parameters())
        optimizer = torch.optim.Adam(params, lr=lr)
        encoder.train()
        for _ in range(steps):
            idx = torch.randint(0, len(train[3]), (batch_size,))
            logits = probe(encoder(train[0][idx], train[1][idx], train[2][idx]).context.float().mean(1))
            loss = nn.functional.cross_entropy(logits, train[3][idx].long())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with eval_mode(encoder), torch.no_grad():
            accuracy = float((probe(encoder(*test[:3]).context.float().mean(1)).argmax(-1) == test[3]).float().mean())
    return CheckResult.from_condition(
        H,
        "separates_two_rules",
        accuracy >= MIN_RULE_ACCURACY,
        f"after {steps} steps the encoder + linear probe tells {' vs '.join(RULES)} apart on "
        f"{accuracy:.0%} of held-out tasks (needs {MIN_RULE_ACCURACY:.0%}; chance 50%)",
        {"accuracy": accuracy, "steps": steps, "final_train_loss": float(loss.detach())},
    )
