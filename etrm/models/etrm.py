"""ETRM and ETRMTRM: the TRM decoder with the demo encoder's context as its prefix."""

from __future__ import annotations

import torch

from etrm.config import ModelConfig
from etrm.models.encoders import build_encoder
from etrm.models.trm import ACTCarry, ACTModel

DATA_KEYS_FEWSHOT = ("inputs", "labels", "puzzle_identifiers", "demo_inputs", "demo_labels", "demo_mask")


class ETRM(ACTModel):
    """In training the encoder re-reads the current demos of every sample at every ACT
    step, so its parameters get gradient at every step (not only on the step a sample
    starts).

    In evaluation without autograd the context is a pure function of the demos (the
    variational encoder uses its mean), so it is computed once and carried: a step where
    no slot takes a new sample reuses the carried context, a step where any slot does
    re-encodes the whole batch. Every context is then the one recomputing would give, bit
    for bit (the encoder sees the same inputs), and an evaluation episode, whose samples
    all start together, runs the encoder once instead of `halt_max_steps` times.
    `reuse_eval_context = False` turns this off (for comparisons)."""

    data_keys = DATA_KEYS_FEWSHOT
    model_type = "etrm"
    reuse_eval_context = True

    def __init__(self, config: ModelConfig):
        if config.model_type != self.model_type:
            raise ValueError(f"{type(self).__name__} needs model_type {self.model_type!r}, got {config.model_type!r}")
        super().__init__(config)
        self.encoder = build_encoder(config)
        self.encoder_frozen = False

    def freeze_encoder(self, frozen: bool = True) -> None:
        """Stop (or resume) encoder training: no gradients, and it runs without autograd."""
        self.encoder_frozen = frozen
        for p in self.encoder.parameters():
            p.requires_grad_(not frozen)

    def encoder_query(self, carry: ACTCarry, reset: torch.Tensor) -> torch.Tensor | None:
        return None

    def caches_context(self) -> bool:
        return self.reuse_eval_context and not self.training and not torch.is_grad_enabled()

    def prefix(self, data, carry, reset):
        if self.caches_context() and carry.context is not None and not bool(reset.any()):
            return carry.context, dict(carry.extras)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.encoder_frozen):
            out = self.encoder(
                data["demo_inputs"], data["demo_labels"], data["demo_mask"], self.encoder_query(carry, reset)
            )
        extras = {"context": out.context}
        if out.kl is not None:
            extras["kl"] = out.kl
        return out.context, extras

    def carried(self, extras):
        return {"context": extras["context"], "extras": extras} if self.caches_context() else {}


class ETRMTRM(ETRM):
    """ETRM whose encoder has a carry: the previous step's context (detached, like the
    decoder's carry) is added to the set encoder's learned queries, so the context is
    refined step by step. On reset the carry is zero, i.e. the learned queries alone
    are the initial context query; every encoder parameter gets gradient every step."""

    model_type = "etrmtrm"

    def encoder_query(self, carry: ACTCarry, reset: torch.Tensor) -> torch.Tensor | None:
        if carry.context is None:
            return None
        return torch.where(reset.view(-1, 1, 1), torch.zeros_like(carry.context), carry.context)

    def caches_context(self) -> bool:
        return False  # the context changes every step

    def carried(self, extras):
        return {"context": extras["context"].detach()}
