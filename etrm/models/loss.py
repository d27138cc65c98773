"""The ACT loss head: stablemax cross-entropy, halting BCE, KL, and official-style metrics."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from etrm.models.trm import ACTCarry

IGNORE_LABEL_ID = -100


def stablemax_s(x: torch.Tensor) -> torch.Tensor:
    """s(x) = 1/(1-x+eps) for x < 0, x + 1 otherwise: a softmax alternative that cannot overflow.

    `where` differentiates both branches: without the official 1e-30 the unused one is
    1/0 at x = 1 (a common bfloat16 logit), and its NaN gradient survives the `where`.
    """
    return torch.where(x < 0, 1.0 / (1.0 - x + 1e-30), x + 1.0)


def log_stablemax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    s = stablemax_s(x)
    return torch.log(s / s.sum(dim=dim, keepdim=True))


def stablemax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_LABEL_ID
) -> torch.Tensor:
    """Per-token loss in float64; ignored tokens contribute 0."""
    logprobs = log_stablemax(logits.to(torch.float64), dim=-1)
    valid = labels != ignore_index
    picked = torch.gather(logprobs, -1, torch.where(valid, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, 0.0)


class LossHead(nn.Module):
    """Wraps an ACT model as `.model` (hence the official `model.inner.*` key layout).

    Loss covers every sample at every step (deep supervision). Metrics are sums over
    samples that halted at this step and have at least one labelled token, as the
    official trainer counts them; divide by `metrics["count"]` to average.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> ACTCarry:
        return self.model.initial_carry(batch)

    def forward(self, carry: ACTCarry, batch: dict[str, torch.Tensor], return_keys: Sequence[str] | None = None):
        """Returns (new_carry, loss, metrics, outputs, all_halted). The loss is a sum over
        the batch: the training step divides it by the global batch size. Called with
        `return_keys` (as the official trainer calls its loss head), outputs hold only those."""
        carry, outputs = self.model(carry, batch)
        labels = carry.current_data["labels"]
        logits = outputs["logits"]

        with torch.no_grad():
            mask = labels != IGNORE_LABEL_ID
            counts = mask.sum(-1)
            divisor = counts.clamp_min(1).unsqueeze(-1)
            preds = logits.argmax(-1)
            correct = mask & (preds == labels)
            seq_correct = correct.sum(-1) == counts  # an all-ignored padding row counts as correct
            valid = carry.halted & (counts > 0)
            metrics = {
                "count": valid.sum(),
                "accuracy": torch.where(valid, (correct.float() / divisor).sum(-1), 0).sum(),
                "exact_accuracy": (valid & seq_correct).sum(),
                "q_halt_accuracy": (valid & ((outputs["q_halt_logits"] >= 0) == seq_correct)).sum(),
                "steps": torch.where(valid, carry.steps, 0).sum(),
            }
        outputs["preds"] = preds

        lm_loss = (stablemax_cross_entropy(logits, labels) / divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(
            outputs["q_halt_logits"], seq_correct.to(outputs["q_halt_logits"].dtype), reduction="sum"
        )
        loss = lm_loss + 0.5 * q_halt_loss
        metrics.update(lm_loss=lm_loss.detach(), q_halt_loss=q_halt_loss.detach())
        if "kl" in outputs:
            kl_loss = outputs["kl"].sum()  # summed over samples like the LM loss: kl_weight is per sample
            loss = loss + self.config.kl_weight * kl_loss
            metrics["kl_loss"] = kl_loss.detach()
        detached = {k: v.detach() for k, v in outputs.items() if return_keys is None or k in return_keys}
        return carry, loss, metrics, detached, bool(carry.halted.all())
