"""The origin's standard demonstration encoder (models/encoders/standard.py), post-norm,
mean pooling: a grid transformer per demo pair, learned queries cross-attending to the
demo vectors. One departure, so that the correct model is correct: see demo_attention_bias."""

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.common import trunc_normal_init_
from models.encoders.base import DemoEncoderConfig, EncoderOutput
from models.layers import Attention, CastedEmbedding, CastedLinear, RotaryEmbedding, SwiGLU, rms_norm


class DemoGridEncoderBlock(nn.Module):
    def __init__(self, config: DemoEncoderConfig):
        super().__init__()
        self.self_attn = Attention(
            config.hidden_size, config.hidden_size // config.num_heads, config.num_heads, config.num_heads, causal=False
        )
        self.mlp = SwiGLU(config.hidden_size, config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, hidden_states: torch.Tensor, cos_sin) -> torch.Tensor:
        hidden_states = rms_norm(
            hidden_states + self.self_attn(cos_sin=cos_sin, hidden_states=hidden_states), self.norm_eps
        )
        return rms_norm(hidden_states + self.mlp(hidden_states), self.norm_eps)


class DemoGridEncoder(nn.Module):
    """(input grid, output grid) tokens -> one vector per pair."""

    def __init__(self, config: DemoEncoderConfig):
        super().__init__()
        self.forward_dtype = getattr(torch, config.forward_dtype)
        self.embed_scale = math.sqrt(config.hidden_size)
        self.input_embed = CastedEmbedding(
            config.vocab_size, config.hidden_size, 1 / self.embed_scale, self.forward_dtype
        )
        self.output_embed = CastedEmbedding(
            config.vocab_size, config.hidden_size, 1 / self.embed_scale, self.forward_dtype
        )
        self.rotary_emb = RotaryEmbedding(config.hidden_size // config.num_heads, 2 * config.seq_len, 10000.0)
        self.layers = nn.ModuleList([DemoGridEncoderBlock(config) for _ in range(config.num_layers)])
        self.pool_proj = CastedLinear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, input_grid: torch.Tensor, output_grid: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat(
            [self.input_embed(input_grid.to(torch.int32)), self.output_embed(output_grid.to(torch.int32))], dim=1
        )
        hidden = self.embed_scale * hidden
        cos_sin = self.rotary_emb()
        for layer in self.layers:
            hidden = layer(hidden, cos_sin)
        keep = (torch.cat([input_grid, output_grid], dim=1) != 0).unsqueeze(-1).to(hidden.dtype)  # PAD = 0
        return self.pool_proj((hidden * keep).sum(1) / keep.sum(1).clamp(min=1))


class DemoSetEncoderLayer(nn.Module):
    def __init__(self, config: DemoEncoderConfig):
        super().__init__()
        h = config.hidden_size
        self.num_heads, self.head_dim = config.num_heads, h // config.num_heads
        self.q_proj, self.k_proj = CastedLinear(h, h, bias=False), CastedLinear(h, h, bias=False)
        self.v_proj, self.o_proj = CastedLinear(h, h, bias=False), CastedLinear(h, h, bias=False)
        self.mlp = SwiGLU(h, config.expansion)
        self.norm_eps = config.rms_norm_eps

    def forward(self, queries: torch.Tensor, demo_encodings: torch.Tensor, attn_bias: torch.Tensor) -> torch.Tensor:
        batch = queries.shape[0]
        split = lambda t: t.view(batch, -1, self.num_heads, self.head_dim).transpose(1, 2)  # noqa: E731
        out = F.scaled_dot_product_attention(
            split(self.q_proj(queries)),
            split(self.k_proj(demo_encodings)),
            split(self.v_proj(demo_encodings)),
            attn_mask=attn_bias,
        )
        queries = rms_norm(
            queries + self.o_proj(out.transpose(1, 2).reshape(batch, -1, self.num_heads * self.head_dim)), self.norm_eps
        )
        return rms_norm(queries + self.mlp(queries), self.norm_eps)


class DemoSetEncoder(nn.Module):
    def __init__(self, config: DemoEncoderConfig):
        super().__init__()
        self.query_tokens = nn.Parameter(
            trunc_normal_init_(
                torch.empty(config.output_tokens, config.hidden_size, dtype=getattr(torch, config.forward_dtype)),
                std=0.02,
            )
        )
        self.layers = nn.ModuleList([DemoSetEncoderLayer(config) for _ in range(config.set_encoder_layers)])
        self.norm_eps = config.rms_norm_eps

    def forward(self, demo_encodings: torch.Tensor, demo_mask: torch.Tensor) -> torch.Tensor:
        context = self.query_tokens.unsqueeze(0).expand(demo_encodings.shape[0], -1, -1).to(demo_encodings.dtype)
        attn_bias = demo_attention_bias(demo_mask, context.dtype)
        for layer in self.layers:
            context = layer(context, demo_encodings, attn_bias)
        return rms_norm(context, self.norm_eps)


def demo_attention_bias(demo_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, 1, D) additive mask over demo slots; a row without any valid demo attends to
    its zeroed slots (the departure from the origin, where it attended to nothing: NaN)."""
    attend = demo_mask | ~demo_mask.any(dim=1, keepdim=True)
    return torch.zeros(attend.shape, dtype=dtype, device=attend.device).masked_fill(~attend, float("-inf"))[
        :, None, None, :
    ]


def encode_demos(grid_encoder: DemoGridEncoder, demo_inputs, demo_labels, demo_mask) -> torch.Tensor:
    """(B, D, S) demo pairs -> (B, D, hidden), padded slots zeroed."""
    batch, demos, seq = demo_inputs.shape
    flat = grid_encoder(demo_inputs.reshape(batch * demos, seq), demo_labels.reshape(batch * demos, seq))
    return flat.view(batch, demos, -1) * demo_mask.unsqueeze(-1).to(flat.dtype)


class StandardDemoEncoder(nn.Module):
    def __init__(self, config: DemoEncoderConfig):
        super().__init__()
        self.config = config
        self.grid_encoder = DemoGridEncoder(config)
        self.set_encoder = DemoSetEncoder(config)

    def demo_encodings(self, demo_inputs, demo_labels, demo_mask) -> torch.Tensor:
        return encode_demos(self.grid_encoder, demo_inputs, demo_labels, demo_mask)

    def forward(self, demo_inputs, demo_labels, demo_mask, return_full_output: bool = False):
        demo_mask = demo_mask.bool()
        context = self.set_encoder(self.demo_encodings(demo_inputs, demo_labels, demo_mask), demo_mask)
        return EncoderOutput(context=context, z_pooled=context.mean(dim=1)) if return_full_output else context
