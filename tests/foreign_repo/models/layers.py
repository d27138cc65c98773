"""Layers under the official names (models/layers.py of the official TRM): weights are kept
in float32 and cast to the input's dtype on use; RoPE tables are not saved."""

import torch
import torch.nn.functional as F
from torch import nn

from models.common import trunc_normal_init_

CosSin = tuple[torch.Tensor, torch.Tensor]


def _find_multiple(a: int, b: int) -> int:
    return -(a // -b) * b


def rms_norm(hidden_states: torch.Tensor, variance_epsilon: float) -> torch.Tensor:
    dtype = hidden_states.dtype
    x = hidden_states.to(torch.float32)
    return (x * torch.rsqrt(x.square().mean(-1, keepdim=True) + variance_epsilon)).to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """q, k: (batch, seq, heads, head_dim); cos, sin: (seq, head_dim)."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    rotated = [(t.to(cos.dtype) * cos + rotate_half(t.to(cos.dtype)) * sin).to(t.dtype) for t in (q, k)]
    return rotated[0], rotated[1]


class CastedLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(input.dtype)
        return F.linear(input, self.weight.to(input.dtype), bias)


class CastedEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(
            trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std)
        )

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.embedding(input, self.embedding_weight.to(self.cast_to))


class RotaryEmbedding(nn.Module):
    def __init__(self, dim: int, max_position_embeddings: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        angles = torch.outer(torch.arange(max_position_embeddings, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.cos_cached = nn.Buffer(angles.cos(), persistent=False)
        self.sin_cached = nn.Buffer(angles.sin(), persistent=False)

    def forward(self) -> CosSin:
        return self.cos_cached, self.sin_cached


class Attention(nn.Module):
    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_key_value_heads: int, causal: bool = False):
        super().__init__()
        self.head_dim, self.num_heads, self.num_key_value_heads, self.causal = (
            head_dim,
            num_heads,
            num_key_value_heads,
            causal,
        )
        self.qkv_proj = CastedLinear(hidden_size, (num_heads + 2 * num_key_value_heads) * head_dim, bias=False)
        self.o_proj = CastedLinear(head_dim * num_heads, hidden_size, bias=False)

    def forward(self, cos_sin: CosSin, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = hidden_states.shape
        qkv = self.qkv_proj(hidden_states).view(
            batch, seq, self.num_heads + 2 * self.num_key_value_heads, self.head_dim
        )
        query, key = qkv[:, :, : self.num_heads], qkv[:, :, self.num_heads : self.num_heads + self.num_key_value_heads]
        value = qkv[:, :, self.num_heads + self.num_key_value_heads :]
        if cos_sin is not None:
            query, key = apply_rotary_pos_emb(query, key, *cos_sin)
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (query, key, value)), is_causal=self.causal)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inter = _find_multiple(round(expansion * hidden_size * 2 / 3), 256)
        self.gate_up_proj = CastedLinear(hidden_size, inter * 2, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)
