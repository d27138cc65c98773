"""TRMWithEncoder as in the origin ETRM's models/recursive_reasoning/etrm.py: the official
TRM decoder (`inner`, official tensor names) whose puzzle-embedding prefix is replaced by
the demo encoder's context, the encoder re-run on every ACT step. Training and
evaluation share one step here; the origin spells them out twice."""

import math
from dataclasses import dataclass

import torch
from torch import nn

from models.common import config_from_dict, trunc_normal_init_
from models.encoders import DemoEncoderConfig, StandardDemoEncoder
from models.layers import Attention, CastedEmbedding, CastedLinear, RotaryEmbedding, SwiGLU, rms_norm

IGNORE_LABEL_ID = -100
DATA_KEYS = ("inputs", "labels", "puzzle_identifiers", "demo_inputs", "demo_labels", "demo_mask")


@dataclass
class TRMEncoderInnerCarry:
    z_H: torch.Tensor
    z_L: torch.Tensor


@dataclass
class TRMEncoderCarry:
    inner_carry: TRMEncoderInnerCarry
    steps: torch.Tensor
    halted: torch.Tensor
    current_data: dict[str, torch.Tensor]


@dataclass
class TRMEncoderConfig:
    batch_size: int
    seq_len: int
    vocab_size: int
    H_cycles: int
    L_cycles: int
    L_layers: int
    hidden_size: int
    expansion: float
    num_heads: int
    pos_encodings: str
    halt_max_steps: int
    halt_exploration_prob: float
    encoder_type: str = "standard"
    encoder_num_layers: int = 2
    encoder_set_layers: int = 1
    H_layers: int = 0  # ignored
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    forward_dtype: str = "bfloat16"
    puzzle_emb_len: int = 16
    no_ACT_continue: bool = True
    freeze_encoder: bool = False
    num_puzzle_identifiers: int = 1
    puzzle_emb_ndim: int = 0


class TRMEncoderBlock(nn.Module):
    def __init__(self, config: TRMEncoderConfig) -> None:
        super().__init__()
        self.self_attn = Attention(
            config.hidden_size, config.hidden_size // config.num_heads, config.num_heads, config.num_heads, causal=False
        )
        self.mlp = SwiGLU(config.hidden_size, config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, cos_sin, hidden_states: torch.Tensor) -> torch.Tensor:
        hidden_states = rms_norm(
            hidden_states + self.self_attn(cos_sin=cos_sin, hidden_states=hidden_states), self.norm_eps
        )
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class TRMEncoderReasoningModule(nn.Module):
    def __init__(self, layers: list[TRMEncoderBlock]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, hidden_states: torch.Tensor, input_injection: torch.Tensor, **kwargs) -> torch.Tensor:
        hidden_states = hidden_states + input_injection
        for layer in self.layers:
            hidden_states = layer(hidden_states=hidden_states, **kwargs)
        return hidden_states


class TRMEncoderInner(nn.Module):
    """The official TRM inner model without puzzle_emb: the prefix comes from outside."""

    def __init__(self, config: TRMEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.forward_dtype = getattr(torch, config.forward_dtype)
        self.embed_scale = math.sqrt(config.hidden_size)
        self.embed_tokens = CastedEmbedding(
            config.vocab_size, config.hidden_size, 1 / self.embed_scale, self.forward_dtype
        )
        self.lm_head = CastedLinear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = CastedLinear(config.hidden_size, 2, bias=True)
        self.puzzle_emb_len = config.puzzle_emb_len
        self.rotary_emb = RotaryEmbedding(
            config.hidden_size // config.num_heads, config.seq_len + self.puzzle_emb_len, config.rope_theta
        )
        self.L_level = TRMEncoderReasoningModule([TRMEncoderBlock(config) for _ in range(config.L_layers)])
        self.H_init = nn.Buffer(
            trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype)), persistent=True
        )
        self.L_init = nn.Buffer(
            trunc_normal_init_(torch.empty(config.hidden_size, dtype=self.forward_dtype)), persistent=True
        )
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    def empty_carry(self, batch_size: int, device=None) -> TRMEncoderInnerCarry:
        shape = (batch_size, self.config.seq_len + self.puzzle_emb_len, self.config.hidden_size)
        return TRMEncoderInnerCarry(
            z_H=torch.empty(shape, dtype=self.forward_dtype, device=device),
            z_L=torch.empty(shape, dtype=self.forward_dtype, device=device),
        )

    def reset_carry(self, reset_flag: torch.Tensor, carry: TRMEncoderInnerCarry) -> TRMEncoderInnerCarry:
        flag = reset_flag.view(-1, 1, 1)
        return TRMEncoderInnerCarry(
            z_H=torch.where(flag, self.H_init, carry.z_H), z_L=torch.where(flag, self.L_init, carry.z_L)
        )

    def _cycle(self, z_H, z_L, input_embeddings, seq_info):
        for _ in range(self.config.L_cycles):
            z_L = self.L_level(z_L, z_H + input_embeddings, **seq_info)
        return self.L_level(z_H, z_L, **seq_info), z_L

    def forward(
        self, carry: TRMEncoderInnerCarry, batch: dict[str, torch.Tensor], context: torch.Tensor
    ) -> tuple[TRMEncoderInnerCarry, torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        seq_info = dict(cos_sin=self.rotary_emb())
        embedding = torch.cat((context, self.embed_tokens(batch["inputs"].to(torch.int32))), dim=-2)
        input_embeddings = self.embed_scale * embedding
        z_H, z_L = carry.z_H, carry.z_L
        with torch.no_grad():  # H_cycles - 1 cycles without gradient, the last one with
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self._cycle(z_H, z_L, input_embeddings, seq_info)
        z_H, z_L = self._cycle(z_H, z_L, input_embeddings, seq_info)
        q_logits = self.q_head(z_H[:, 0]).to(torch.float32)
        new_carry = TRMEncoderInnerCarry(z_H=z_H.detach(), z_L=z_L.detach())
        return new_carry, self.lm_head(z_H)[:, self.puzzle_emb_len :], (q_logits[..., 0], q_logits[..., 1])


class TRMWithEncoder(nn.Module):
    """The correct model: the encoder reads every sample's current demos on every step."""

    config_class = TRMEncoderConfig
    encoder_classes = {"standard": StandardDemoEncoder}

    def __init__(self, config_dict: dict):
        super().__init__()
        self.config = config_from_dict(self.config_class, config_dict)
        cfg = self.config
        if cfg.encoder_type not in self.encoder_classes:
            raise ValueError(f"Unknown encoder_type: {cfg.encoder_type}")
        self.encoder = self.encoder_classes[cfg.encoder_type](self.encoder_config())
        if cfg.freeze_encoder:  # the origin's diagnostic switch
            for param in self.encoder.parameters():
                param.requires_grad = False
        self.inner = TRMEncoderInner(cfg)

    def encoder_config(self) -> DemoEncoderConfig:
        cfg = self.config
        return DemoEncoderConfig(
            hidden_size=cfg.hidden_size,
            num_heads=cfg.num_heads,
            num_layers=cfg.encoder_num_layers,
            output_tokens=cfg.puzzle_emb_len,
            vocab_size=cfg.vocab_size,
            seq_len=cfg.seq_len,
            expansion=cfg.expansion,
            rms_norm_eps=cfg.rms_norm_eps,
            forward_dtype=cfg.forward_dtype,
            set_encoder_layers=cfg.encoder_set_layers,
        )

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> TRMEncoderCarry:
        size, device = batch["inputs"].shape[0], batch["inputs"].device
        return TRMEncoderCarry(
            inner_carry=self.inner.empty_carry(size, device=device),
            steps=torch.zeros((size,), dtype=torch.int32, device=device),
            halted=torch.ones((size,), dtype=torch.bool, device=device),
            current_data={k: torch.empty_like(v) for k, v in batch.items() if k in DATA_KEYS},
        )

    def encode(self, carry, data: dict[str, torch.Tensor], needs_reset: torch.Tensor):
        """(context, extra outputs, encoder state for the next carry): here every sample's
        demos are encoded afresh and nothing is carried."""
        out = self.encoder(data["demo_inputs"], data["demo_labels"], data["demo_mask"], return_full_output=True)
        context = out.context if hasattr(out, "context") else out
        return context, ({"kl_loss": out.kl_loss} if getattr(out, "kl_loss", None) is not None else {}), None

    def next_carry(self, inner_carry, steps, halted, data, encoder_state):
        return TRMEncoderCarry(inner_carry=inner_carry, steps=steps, halted=halted, current_data=data)

    def forward(self, carry, batch: dict[str, torch.Tensor]):
        needs_reset = carry.halted
        data = {
            k: torch.where(needs_reset.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
            if k in batch
        }
        context, extra, encoder_state = self.encode(carry, data, needs_reset)
        inner_carry = self.inner.reset_carry(needs_reset, carry.inner_carry)
        steps = torch.where(needs_reset, 0, carry.steps)
        inner_carry, logits, (q_halt_logits, q_continue_logits) = self.inner(inner_carry, data, context)
        outputs = {
            "logits": logits,
            "labels": data["labels"],
            "q_halt_logits": q_halt_logits,
            "q_continue_logits": q_continue_logits,
            **extra,
        }
        with torch.no_grad():
            steps = steps + 1
            halted = steps >= self.config.halt_max_steps
            if self.training and self.config.halt_max_steps > 1:  # dynamic halting with exploration
                halted = halted | (q_halt_logits > 0)
                explore = torch.rand_like(q_halt_logits) < self.config.halt_exploration_prob
                halted = halted & (
                    steps >= explore * torch.randint_like(steps, low=2, high=self.config.halt_max_steps + 1)
                )
        outputs["steps"] = steps.float()
        return self.next_carry(inner_carry, steps, halted, data, encoder_state), outputs
