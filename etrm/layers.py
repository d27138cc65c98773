"""Building blocks shared by the decoder and the demo encoders.

Weights are stored in float32 and cast to the compute dtype on use (the official
TRM's "casted" modules), and module attribute names match the official TRM so
its checkpoints load without renaming.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def trunc_normal_init_(tensor: torch.Tensor, std: float = 1.0, lower: float = -2.0, upper: float = 2.0) -> torch.Tensor:
    """JAX-style truncated normal: samples in [lower, upper] standard deviations whose
    *resulting* standard deviation is `std` (PyTorch's version under-shoots it)."""
    with torch.no_grad():
        if std == 0:
            return tensor.zero_()
        sqrt2 = math.sqrt(2.0)
        a, b = math.erf(lower / sqrt2), math.erf(upper / sqrt2)
        z = (b - a) / 2
        c = 1.0 / math.sqrt(2 * math.pi)
        pdf_u, pdf_l = c * math.exp(-0.5 * upper**2), c * math.exp(-0.5 * lower**2)
        truncated_std = math.sqrt(1 - (upper * pdf_u - lower * pdf_l) / z - ((pdf_u - pdf_l) / z) ** 2)
        scale = std / truncated_std
        tensor.uniform_(a, b).erfinv_().mul_(sqrt2 * scale).clamp_(lower * scale, upper * scale)
    return tensor


def _cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # `.to` would also return the same tensor, but skipping the call keeps the
    # hot loop free of dispatch overhead when dtypes already match.
    return weight if weight.dtype == dtype else weight.to(dtype)


class CastedLinear(nn.Module):
    """Linear layer with LeCun truncated-normal init, float32 storage, compute in the input's dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else _cast(self.bias, x.dtype)
        return F.linear(x, _cast(self.weight, x.dtype), bias)


class CastedEmbedding(nn.Module):
    """Embedding table stored in float32, looked up in `cast_to`."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, _cast(self.embedding_weight, self.cast_to))


class RotaryEmbedding(nn.Module):
    """RoPE tables (not saved in checkpoints), laid out for (B, heads, S, head_dim) tensors."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        self.register_buffer("cos_cached", emb.cos(), persistent=False)
        self.register_buffer("sin_cached", emb.sin(), persistent=False)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_cached, self.sin_cached


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., S, head_dim) by position; computed in float32 like the official TRM."""
    if x.dtype == cos.dtype:
        return x * cos + rotate_half(x) * sin
    xf = x.float()
    return (xf * cos + rotate_half(xf) * sin).to(x.dtype)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm computed in float32 (a learned weight would break the official key layout)."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, (x.shape[-1],), eps=eps)
    return F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


class Attention(nn.Module):
    """Bidirectional multi-head self-attention on scaled_dot_product_attention, with optional RoPE."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.qkv_proj = CastedLinear(hidden_size, 3 * hidden_size, bias=False)
        self.o_proj = CastedLinear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        batch, seq, hidden = x.shape
        # (B, S, 3, H, D) -> three (B, H, S, D) views: no copies before attention.
        q, k, v = self.qkv_proj(x).view(batch, seq, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        if cos_sin is not None:
            cos, sin = cos_sin
            q, k = apply_rotary(q, cos[:seq], sin[:seq]), apply_rotary(k, cos[:seq], sin[:seq])
        out = F.scaled_dot_product_attention(q, k, v)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, hidden))


def swiglu_width(hidden_size: int, expansion: float) -> int:
    """round(expansion * hidden * 2/3) rounded up to a multiple of 256 (official TRM)."""
    return -(round(expansion * hidden_size * 2 / 3) // -256) * 256


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, expansion: float):
        super().__init__()
        inter = swiglu_width(hidden_size, expansion)
        self.gate_up_proj = CastedLinear(hidden_size, 2 * inter, bias=False)
        self.down_proj = CastedLinear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class TransformerBlock(nn.Module):
    """Self-attention + SwiGLU. Post-norm (the TRM decoder's) or pre-norm (an encoder variant)."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, eps: float, norm_style: str = "post"):
        super().__init__()
        self.self_attn = Attention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion)
        self.eps = eps
        self.pre_norm = norm_style == "pre"

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.self_attn(rms_norm(x, self.eps), cos_sin)
            return x + self.mlp(rms_norm(x, self.eps))
        x = rms_norm(x + self.self_attn(x, cos_sin), self.eps)
        return rms_norm(x + self.mlp(x), self.eps)
