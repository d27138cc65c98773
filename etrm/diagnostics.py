"""Encoder diagnostics: is the demo encoder's context informative, or (nearly) constant?

The investigation read one number, `encoder_token_std`, as evidence of "diverse
outputs". These numbers separate the questions that one number mixed up:

* `output_mean`, `output_std`: over every element of the context.
* `output_norm`: mean L2 norm of a context token (the encoder normalises tokens to RMS 1,
  so sqrt(hidden) is expected before the decoder's own scale).
* `cross_sample_std`: spread across samples, per (token, feature), averaged. 0 means every
  sample got the same context: the decoder cannot tell puzzles apart.
* `within_task_std`: spread across the distinct augmentations of one task, averaged over
  tasks with at least two of them. A good encoder keeps it well below `cross_sample_std`
  (the rule is the same). Needs task names (identifiers.json); NaN without them.
* `token_std`: spread across the `puzzle_emb_len` tokens of one sample, averaged.

Rows with the blank identifier (padding) are left out. A value that needs two samples
and does not have them is NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from etrm.data.grids import BLANK_IDENTIFIER_ID, parse_augmentation_name

DIAGNOSTIC_KEYS = ("output_mean", "output_std", "output_norm", "cross_sample_std", "within_task_std", "token_std")
NAN = float("nan")


def encoder_diagnostics(
    context: torch.Tensor, puzzle_identifiers: torch.Tensor, identifiers_to_task: Sequence[str] | None = None
) -> dict[str, float]:
    """Diagnostics of a (B, P, h) context for the samples' puzzle identifiers (B,).

    `identifiers_to_task`: the identifier names (`identifiers.json`, index = identifier);
    each name's task is its part before `|||` (`<task>|||t<t>|||<mapping>`).
    """
    if context.ndim != 3 or puzzle_identifiers.shape != context.shape[:1]:
        raise ValueError(
            f"encoder_diagnostics: context must be (B, P, h) with puzzle_identifiers (B,); got "
            f"{tuple(context.shape)} and {tuple(puzzle_identifiers.shape)}"
        )
    ids = puzzle_identifiers.detach().long().cpu()
    keep = ids != BLANK_IDENTIFIER_ID
    ctx = context.detach().to("cpu", torch.float64)[keep]
    ids = ids[keep]
    if len(ctx) == 0:
        return dict.fromkeys(DIAGNOSTIC_KEYS, NAN)
    return {
        "output_mean": ctx.mean().item(),
        "output_std": ctx.std().item() if ctx.numel() > 1 else NAN,
        "output_norm": torch.linalg.vector_norm(ctx, dim=-1).mean().item(),
        "cross_sample_std": ctx.std(dim=0).mean().item() if len(ctx) > 1 else NAN,
        "within_task_std": _within_task_std(ctx, ids, identifiers_to_task),
        "token_std": ctx.std(dim=1).mean().item() if ctx.shape[1] > 1 else NAN,
    }


def _within_task_std(ctx: torch.Tensor, ids: torch.Tensor, names: Sequence[str] | None) -> float:
    if names is None:
        return NAN
    # One row per distinct identifier: samples of one augmentation share their demos, so
    # duplicates would pull the spread towards 0 without saying anything about the encoder.
    unique_ids, inverse = ids.unique(return_inverse=True)
    first = torch.full((len(unique_ids),), len(ids), dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(len(ids)), reduce="amin"
    )
    rows, uids = ctx[first], unique_ids.tolist()
    if max(uids) >= len(names):
        raise ValueError(
            f"encoder_diagnostics: puzzle identifier {max(uids)} is outside the identifier names ({len(names)} entries)"
        )
    tasks = [parse_augmentation_name(names[i])[0] for i in uids]
    _, task_index = np.unique(np.asarray(tasks), return_inverse=True)
    group = torch.as_tensor(task_index.reshape(-1), dtype=torch.long)
    num_groups = int(group.max()) + 1
    flat = rows.flatten(1)
    count = torch.zeros(num_groups, dtype=torch.float64).index_add_(
        0, group, torch.ones(len(group), dtype=torch.float64)
    )
    total = torch.zeros(num_groups, flat.shape[1], dtype=torch.float64).index_add_(0, group, flat)
    mean = total / count.unsqueeze(-1)
    squares = torch.zeros_like(total).index_add_(0, group, (flat - mean[group]) ** 2)
    several = count > 1
    if not several.any():
        return NAN
    std = (squares[several] / (count[several] - 1).unsqueeze(-1)).sqrt()  # unbiased, like torch.std
    return std.mean(dim=1).mean().item()


__all__ = ["DIAGNOSTIC_KEYS", "encoder_diagnostics"]
