"""ACTLossHead as in the origin ETRM's models/losses.py (a superset of the official one):
`forward(return_keys, **model_kwargs)` returns (carry, loss, metrics, outputs, all_finish),
outputs filtered by `return_keys`. In training the labels come from the model's outputs
and `all_finish` is always True (one step per batch); in evaluation from the carry."""

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL_ID = -100


def s(x: torch.Tensor, epsilon: float = 1e-30) -> torch.Tensor:
    return torch.where(x < 0, 1 / (1 - x + epsilon), x + 1)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s_x = s(x)
    return torch.log(s_x / torch.sum(s_x, dim=dim, keepdim=True))


def stablemax_cross_entropy(logits, labels, ignore_index: int = IGNORE_LABEL_ID, valid_mask=None):
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    valid_mask = labels != ignore_index if valid_mask is None else valid_mask
    picked = torch.gather(logprobs, index=torch.where(valid_mask, labels, 0).long().unsqueeze(-1), dim=-1).squeeze(-1)
    return -torch.where(valid_mask, picked, 0)


class ACTLossHead(nn.Module):
    def __init__(self, model: nn.Module, loss_type: str, kl_weight: float = 0.0):
        super().__init__()
        self.model = model
        self.loss_fn = globals()[loss_type]
        self.kl_weight = kl_weight

    def initial_carry(self, *args, **kwargs):
        return self.model.initial_carry(*args, **kwargs)

    def forward(
        self, return_keys: Sequence[str], **model_kwargs
    ) -> tuple[Any, torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor] | None, torch.Tensor]:
        new_carry, outputs = self.model(**model_kwargs)
        training = self.model.training
        labels = (
            outputs.get("labels", model_kwargs["batch"]["labels"]) if training else new_carry.current_data["labels"]
        )
        mask = labels != IGNORE_LABEL_ID
        counts = mask.sum(-1)
        divisor = counts.clamp_min(1).unsqueeze(-1)
        lm_loss = (
            self.loss_fn(outputs["logits"], labels, ignore_index=IGNORE_LABEL_ID, valid_mask=mask) / divisor
        ).sum()
        with torch.no_grad():
            outputs["preds"] = torch.argmax(outputs["logits"], dim=-1)
            is_correct = mask & (outputs["preds"] == labels)
            seq_is_correct = is_correct.sum(-1) == counts
            valid = (counts > 0) if training else new_carry.halted & (counts > 0)
            metrics = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (is_correct.to(torch.float32) / divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid & seq_is_correct).sum(),
                "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_is_correct)).sum(),
                "steps": outputs["steps"].sum() if training else torch.where(valid, new_carry.steps, 0).sum(),
            }
        q_halt_loss = F.binary_cross_entropy_with_logits(
            outputs["q_halt_logits"], seq_is_correct.to(outputs["q_halt_logits"].dtype), reduction="sum"
        )
        metrics.update(lm_loss=lm_loss.detach(), q_halt_loss=q_halt_loss.detach())
        total = lm_loss + 0.5 * q_halt_loss
        if training and "kl_loss" in outputs and self.kl_weight > 0:
            total = total + self.kl_weight * outputs["kl_loss"]
            metrics["kl_loss"] = outputs["kl_loss"].detach()
        detached = {k: outputs[k].detach() for k in return_keys if k in outputs}
        all_finish = torch.tensor(True) if training else new_carry.halted.all()
        return new_carry, total, metrics, detached, all_finish
