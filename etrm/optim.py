"""Optimizers and the learning-rate schedule of the official TRM recipe, in plain torch.

* `AdamATan2`: Adam with an `atan2` in place of `m / (sqrt(v) + eps)` (no epsilon, bounded
  update) and decoupled weight decay, computed as the CUDA-only `adam-atan2` package (0.0.3)
  that the official trainer imports does; this one runs anywhere, with float32 moments.
* `SparseSignSGD`: the puzzle-embedding optimizer. Only rows used by the batch move:
  `w[ids] = w[ids] * (1 - lr * wd) - lr * sign(sum of the rows' gradients)`.
* `lr_schedule`: linear warmup, then cosine decay to `min_ratio * base_lr`
  (`min_ratio = 1.0` is the official ARC run: constant after warmup).

Parameters whose `.grad` is None are skipped entirely by both optimizers, neither
stepped nor decayed: that is how a frozen part of the model stays bitwise unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.distributed as dist
from torch import nn


def lr_schedule(step: int, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float = 1.0) -> float:
    """Learning rate for optimizer update number `step` (the first update is step 1).

    Warmup: `base_lr * step / warmup_steps` while `step < warmup_steps`; then a half cosine
    from `base_lr` at `warmup_steps` to `min_ratio * base_lr` at `total_steps`, held there.
    """
    if warmup_steps < 0 or total_steps < 1 or not 0.0 <= min_ratio <= 1.0 or step < 0:
        raise ValueError(
            f"lr_schedule: need step >= 0, warmup_steps >= 0, total_steps >= 1 and min_ratio in "
            f"[0, 1]; got step={step}, warmup_steps={warmup_steps}, total_steps={total_steps}, "
            f"min_ratio={min_ratio}"
        )
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


class AdamATan2(torch.optim.Optimizer):
    """`p *= 1 - lr * wd; p -= lr / (1 - beta1^t) * atan2(m, sqrt(v) / sqrt(1 - beta2^t))`.

    As the `adam-atan2` kernel: the first moment's bias correction scales the step outside
    the atan2, not `m` inside it, so the first update is `lr * atan(1 - beta1) / (1 - beta1)`
    (0.997 lr at beta1 0.9), not `lr * pi/4`. Moments are kept in float32 whatever the
    parameter dtype (the package keeps them in the parameter's dtype; ours are float32).
    A parameter without a gradient this step is left alone: no decay, no moment update,
    no step count.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict],
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.1,
    ):
        if lr < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(
                f"AdamATan2: need lr >= 0, weight_decay >= 0 and betas in [0, 1); got lr={lr}, "
                f"betas={betas}, weight_decay={weight_decay}"
            )
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamATan2 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                state["step"] += 1
                t = state["step"]
                grad = p.grad.float()
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(grad, 1.0 - beta1)
                v.lerp_(grad.square(), 1.0 - beta2)
                update = torch.atan2(m, v.sqrt() / math.sqrt(1.0 - beta2**t))
                new = p.float().mul_(1.0 - lr * wd).add_(update, alpha=-lr / (1.0 - beta1**t))
                p.copy_(new)
        return loss


class SparseSignSGD(torch.optim.Optimizer):
    """Sign-SGD with decoupled weight decay on the rows of a puzzle embedding used by the batch.

    `embedding` is a `PuzzleEmbedding` (`model.inner.puzzle_emb`): its training-mode
    forward stores `local_weights` (the used rows, a leaf with grad) and `local_ids`.
    Gradients of repeated identifiers are summed before the sign; with `world_size > 1`
    rows and ids are all-gathered first, so every rank applies the same update.
    Call `step()` once per forward; `zero_grad()` drops the stored rows.
    """

    def __init__(self, embedding: nn.Module, lr: float = 1e-2, weight_decay: float = 0.1, world_size: int = 1):
        if not hasattr(embedding, "weights") or not hasattr(embedding, "local_weights"):
            raise TypeError(
                f"SparseSignSGD needs a PuzzleEmbedding (with 'weights' and 'local_weights'), "
                f"got {type(embedding).__name__}"
            )
        if lr < 0 or weight_decay < 0 or world_size < 1:
            raise ValueError(
                f"SparseSignSGD: need lr >= 0, weight_decay >= 0, world_size >= 1; got lr={lr}, "
                f"weight_decay={weight_decay}, world_size={world_size}"
            )
        self.embedding = embedding
        self.world_size = world_size
        super().__init__([embedding.weights], dict(lr=lr, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        if closure is not None:
            raise ValueError("SparseSignSGD does not take a closure")
        local, ids = self.embedding.local_weights, self.embedding.local_ids
        if local is None or local.grad is None:
            return None  # embedding not used with gradient this step (e.g. frozen)
        grads, ids = local.grad, ids.long()
        if self.world_size > 1:
            grads, ids = _all_gather(grads, self.world_size), _all_gather(ids, self.world_size)
        unique_ids, inverse = ids.unique(return_inverse=True)
        summed = torch.zeros(len(unique_ids), grads.shape[-1], dtype=grads.dtype, device=grads.device)
        summed.index_add_(0, inverse, grads)
        group = self.param_groups[0]
        weights = group["params"][0]
        rows = weights[unique_ids]
        rows.mul_(1.0 - group["lr"] * group["weight_decay"]).add_(summed.sign().to(rows.dtype), alpha=-group["lr"])
        weights[unique_ids] = rows
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.embedding.local_weights = None
        self.embedding.local_ids = None


def _all_gather(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    # The list form of all_gather: gloo (CPU) lacks all_gather_into_tensor.
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


__all__ = ["AdamATan2", "SparseSignSGD", "lr_schedule"]
