"""TRM: the recursive decoder, its puzzle embedding, and the ACT wrapper.

Module names reproduce the official TRM so that `state_dict()` of
`torch.compile(LossHead(TRM(config)))` has the official key layout
(`_orig_mod.model.inner.*`, DESIGN.md section 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from etrm.config import ModelConfig
from etrm.layers import (
    CastedEmbedding,
    CastedLinear,
    RotaryEmbedding,
    TransformerBlock,
    trunc_normal_init_,
    weight_casts_shared,
)

DATA_KEYS_TRM = ("inputs", "labels", "puzzle_identifiers")


def dtype_of(config: ModelConfig) -> torch.dtype:
    return getattr(torch, config.forward_dtype)


@dataclass
class InnerCarry:
    z_H: torch.Tensor  # answer state (B, puzzle_emb_len + seq_len, hidden)
    z_L: torch.Tensor  # latent state, same shape


@dataclass
class ACTCarry:
    inner: InnerCarry
    steps: torch.Tensor  # (B,) int32 ACT steps taken by the sample now in the slot
    halted: torch.Tensor  # (B,) bool: the slot takes the next batch's sample on the next call
    current_data: dict[str, torch.Tensor]  # the data of the sample now in each slot
    # Encoder models: ETRMTRM's previous-step context (detached), or ETRM's context
    # reused in evaluation, with its other prefix outputs (`extras`, e.g. the KL).
    context: torch.Tensor | None = None  # (B, puzzle_emb_len, hidden)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)


class PuzzleEmbedding(nn.Module):
    """One `ndim` vector per puzzle identifier, stored as a (saved) buffer like the official
    sparse embedding. In training, the rows used by the batch are exposed as a leaf tensor
    (`local_weights`, with their `local_ids`) so a sparse sign-SGD step can update them."""

    def __init__(self, num_embeddings: int, ndim: int, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.register_buffer("weights", torch.zeros(num_embeddings, ndim), persistent=True)  # zero init
        self.local_weights: torch.Tensor | None = None
        self.local_ids: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.weights[ids.long()]
        if self.training and torch.is_grad_enabled():
            rows = rows.detach().requires_grad_(True)
            self.local_weights, self.local_ids = rows, ids
        return rows.to(self.cast_to)


class ReasoningModule(nn.Module):
    """f(h, injection): add the injection, then the shared stack of L_layers blocks."""

    def __init__(self, layers: list[TransformerBlock]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden: torch.Tensor, injection: torch.Tensor, cos_sin) -> torch.Tensor:
        hidden = hidden + injection
        for layer in self.layers:
            hidden = layer(hidden, cos_sin)
        return hidden


class TRMDecoder(nn.Module):
    """The recursion of DESIGN.md section 3. `prefix` is the (B, puzzle_emb_len, hidden)
    puzzle embedding (TRM) or encoder context (ETRM), before the sqrt(hidden) scale."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.forward_dtype = dtype_of(config)
        self.embed_scale = math.sqrt(config.hidden_size)
        h = config.hidden_size
        self.embed_tokens = CastedEmbedding(
            config.vocab_size, h, init_std=1.0 / self.embed_scale, cast_to=self.forward_dtype
        )
        self.lm_head = CastedLinear(h, config.vocab_size, bias=False)
        self.q_head = CastedLinear(h, 2, bias=True)
        if config.model_type == "trm" and config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(config.num_puzzle_identifiers, config.puzzle_emb_ndim, self.forward_dtype)
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(h // config.num_heads, config.full_seq_len, config.rope_theta)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(
                config.full_seq_len, h, init_std=1.0 / self.embed_scale, cast_to=self.forward_dtype
            )
        self.L_level = ReasoningModule(
            [
                TransformerBlock(h, config.num_heads, config.expansion, config.rms_norm_eps)
                for _ in range(config.L_layers)
            ]
        )
        self.register_buffer(
            "H_init", trunc_normal_init_(torch.empty(h, dtype=self.forward_dtype), std=1.0), persistent=True
        )
        self.register_buffer(
            "L_init", trunc_normal_init_(torch.empty(h, dtype=self.forward_dtype), std=1.0), persistent=True
        )
        with torch.no_grad():  # Q starts near "never halt" so early training is not cut short
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5.0)

    def puzzle_prefix(self, puzzle_identifiers: torch.Tensor) -> torch.Tensor:
        """The TRM prefix: the puzzle vector zero-padded to puzzle_emb_len tokens."""
        cfg = self.config
        if not hasattr(self, "puzzle_emb"):  # puzzle_emb_ndim 0: an all-zero prefix
            return torch.zeros(
                puzzle_identifiers.shape[0],
                cfg.puzzle_emb_len,
                cfg.hidden_size,
                dtype=self.forward_dtype,
                device=puzzle_identifiers.device,
            )
        emb = self.puzzle_emb(puzzle_identifiers)
        pad = cfg.puzzle_emb_len * cfg.hidden_size - emb.shape[-1]
        if pad > 0:
            emb = F.pad(emb, (0, pad))
        return emb.view(-1, cfg.puzzle_emb_len, cfg.hidden_size)

    def input_embeddings(self, inputs: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
        x = torch.cat((prefix.to(self.forward_dtype), self.embed_tokens(inputs.long())), dim=-2)
        if self.config.pos_encodings == "learned":  # 1/sqrt(2) keeps the forward variance
            x = 0.707106781 * (x + self.embed_pos.embedding_weight.to(self.forward_dtype))
        return self.embed_scale * x

    def empty_carry(self, batch_size: int, device: torch.device) -> InnerCarry:
        shape = (batch_size, self.config.full_seq_len, self.config.hidden_size)
        return InnerCarry(
            z_H=torch.zeros(shape, dtype=self.forward_dtype, device=device),
            z_L=torch.zeros(shape, dtype=self.forward_dtype, device=device),
        )

    def reset_carry(self, reset: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        flag = reset.view(-1, 1, 1)
        return InnerCarry(z_H=torch.where(flag, self.H_init, carry.z_H), z_L=torch.where(flag, self.L_init, carry.z_L))

    def forward(self, carry: InnerCarry, inputs: torch.Tensor, prefix: torch.Tensor):
        """One ACT step: H_cycles-1 cycles without gradient, the last with gradient.
        Returns (detached carry, logits (B, seq_len, vocab), q_halt (B,), q_continue (B,))."""
        with weight_casts_shared():  # each weight cast to the compute dtype once per step, not per application
            return self._recursion(carry, inputs, prefix)

    def _recursion(self, carry: InnerCarry, inputs: torch.Tensor, prefix: torch.Tensor):
        cfg = self.config
        cos_sin = self.rotary_emb() if cfg.pos_encodings == "rope" else None
        x = self.input_embeddings(inputs, prefix)
        z_H, z_L = carry.z_H, carry.z_L
        # z_H is fixed during a cycle's L updates, so their injection z_H + x is formed once per cycle.
        with torch.no_grad():
            for _ in range(cfg.H_cycles - 1):
                injection = z_H + x
                for _ in range(cfg.L_cycles):
                    z_L = self.L_level(z_L, injection, cos_sin)
                z_H = self.L_level(z_H, z_L, cos_sin)
        injection = z_H + x
        for _ in range(cfg.L_cycles):
            z_L = self.L_level(z_L, injection, cos_sin)
        z_H = self.L_level(z_H, z_L, cos_sin)
        logits = self.lm_head(z_H[:, cfg.puzzle_emb_len :])
        q = self.q_head(z_H[:, 0]).float()
        return InnerCarry(z_H=z_H.detach(), z_L=z_L.detach()), logits, q[..., 0], q[..., 1]


class ACTModel(nn.Module):
    """Adaptive computation time around a decoder. Subclasses say where the prefix comes from."""

    data_keys: tuple[str, ...] = DATA_KEYS_TRM

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.inner = TRMDecoder(config)

    # --- prefix (overridden by the encoder models) --------------------------------------
    def prefix(self, data: dict[str, torch.Tensor], carry: ACTCarry, reset: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Return the decoder prefix and extra outputs (e.g. the encoder context, KL)."""
        return self.inner.puzzle_prefix(data["puzzle_identifiers"]), {}

    def carried(self, extras: dict[str, torch.Tensor]) -> dict:
        """What the next step's carry keeps of this step's prefix outputs (ACTCarry fields)."""
        return {}

    # --- ACT ---------------------------------------------------------------------------
    def initial_carry(self, batch: dict[str, torch.Tensor]) -> ACTCarry:
        """All slots start halted, so the first call loads the batch and resets the state."""
        size = batch["inputs"].shape[0]
        device = batch["inputs"].device
        missing = [k for k in self.data_keys if k not in batch]
        if missing:
            raise KeyError(f"batch lacks {missing} needed by {type(self).__name__} (has {sorted(batch)})")
        return ACTCarry(
            inner=self.inner.empty_carry(size, device),
            steps=torch.zeros(size, dtype=torch.int32, device=device),
            halted=torch.ones(size, dtype=torch.bool, device=device),
            current_data={k: torch.zeros_like(batch[k]) for k in self.data_keys},
        )

    def forward(self, carry: ACTCarry, batch: dict[str, torch.Tensor]) -> tuple[ACTCarry, dict[str, torch.Tensor]]:
        reset = carry.halted
        inner = self.inner.reset_carry(reset, carry.inner)
        steps = torch.where(reset, 0, carry.steps)
        # Halted slots take the new batch's sample; continuing ones keep their own data.
        data = {
            k: torch.where(reset.view((-1,) + (1,) * (v.ndim - 1)), batch[k], v) for k, v in carry.current_data.items()
        }

        prefix, extras = self.prefix(data, carry, reset)
        inner, logits, q_halt, q_continue = self.inner(inner, data["inputs"], prefix)
        outputs = {"logits": logits, "q_halt_logits": q_halt, "q_continue_logits": q_continue, **extras}

        with torch.no_grad():
            steps = steps + 1
            halted = steps >= self.config.halt_max_steps
            if self.training and self.config.halt_max_steps > 1:
                halted = halted | (q_halt > 0)
                # Exploration: with probability p, a fresh minimum step count in 2..max vetoes halting.
                explore = torch.rand_like(q_halt) < self.config.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, low=2, high=self.config.halt_max_steps + 1)
                halted = halted & (steps >= min_steps)
        new_carry = ACTCarry(inner=inner, steps=steps, halted=halted, current_data=data, **self.carried(extras))
        return new_carry, outputs


class TRM(ACTModel):
    """TRM: a learned puzzle embedding per identifier is the decoder prefix."""

    def __init__(self, config: ModelConfig):
        if config.model_type != "trm":
            raise ValueError(f"TRM needs model_type 'trm', got {config.model_type!r}")
        super().__init__(config)
