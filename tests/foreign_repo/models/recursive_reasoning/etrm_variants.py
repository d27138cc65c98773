"""Deliberately broken variants of TRMWithEncoder, each a bug a researcher's code could
have; the checks must catch every one through the adapter. (A frozen encoder needs no
class: the origin's own `arch.freeze_encoder: true` switch does it.)"""

from dataclasses import dataclass

import torch
from torch import nn

from models.encoders.standard import StandardDemoEncoder
from models.recursive_reasoning.etrm import TRMEncoderCarry, TRMWithEncoder

MAX_DEMO_SLOTS = 10  # the origin's max_demos default


class DetachedContextTRM(TRMWithEncoder):
    """The context is detached before the decoder reads it (H2: no encoder gradient)."""

    def encode(self, carry, data, needs_reset):
        context, extra, state = super().encode(carry, data, needs_reset)
        return context.detach(), extra, state


@dataclass
class CachedCarry(TRMEncoderCarry):
    context: torch.Tensor | None = None  # (B, puzzle_emb_len, hidden), detached like the rest of the carry


class CachedContextTRM(TRMWithEncoder):
    """Encodes a sample's demos on its first step only and reuses that context, kept in the
    (detached) carry, on its later steps (H2: no encoder gradient once no sample resets)."""

    def initial_carry(self, batch):
        return CachedCarry(**vars(super().initial_carry(batch)))

    def encode(self, carry, data, needs_reset):
        if carry.context is not None and not needs_reset.any():
            return carry.context, {}, carry.context
        context, extra, _ = super().encode(carry, data, needs_reset)
        if carry.context is not None:
            context = torch.where(needs_reset.view(-1, 1, 1), context, carry.context)
        return context, extra, context.detach()

    def next_carry(self, inner_carry, steps, halted, data, encoder_state):
        return CachedCarry(
            inner_carry=inner_carry, steps=steps, halted=halted, current_data=data, context=encoder_state
        )


class SlotPositionDemoEncoder(StandardDemoEncoder):
    """Adds a learned embedding per demo slot before aggregating, as a positional encoding
    over demos would: the context then depends on the order of the demos (H3)."""

    def __init__(self, config):
        super().__init__(config)
        self.slot_embed = nn.Parameter(torch.randn(MAX_DEMO_SLOTS, config.hidden_size) * 0.5)

    def demo_encodings(self, demo_inputs, demo_labels, demo_mask):
        encodings = super().demo_encodings(demo_inputs, demo_labels, demo_mask)
        return encodings + self.slot_embed[: encodings.shape[1]].to(encodings.dtype)


class DemoSlotPositionTRM(TRMWithEncoder):
    encoder_classes = {"standard": SlotPositionDemoEncoder}
