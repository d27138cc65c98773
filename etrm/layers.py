"""Building blocks shared by the decoder and the demo encoders.

Weights are stored in float32 and cast to the compute dtype on use (the official
TRM's "casted" modules), and module attribute names match the official TRM so
its checkpoints load without renaming.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from etrm.bfloat16 import attention, emulated_linear, emulating_bfloat16


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


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """x upcast to float32 if it is narrower (bfloat16, float16); float32 and float64 kept."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # `.to` would also return the same tensor, but skipping the call keeps the
    # hot loop free of dispatch overhead when dtypes already match.
    return weight if weight.dtype == dtype else weight.to(dtype)


# The recursion applies each decoder weight 15-30 times per ACT step (H_cycles x (L_cycles + 1)
# x ...), and outside autograd its cast to the compute dtype is the same tensor every time.
# A plain global, not a ContextVar, so that torch.compile can read it.
_shared_casts: dict | None = None


@contextlib.contextmanager
def weight_casts_shared() -> Iterator[None]:
    """Within the block, each CastedLinear parameter that no gradient must reach (autograd off,
    or a frozen weight) is cast to the compute dtype once and the cast reused: the weights do not
    change within one forward. The casts are dropped when the block ends, so a weight changed
    between forwards (an optimizer step, a load, an edit through `.data`) is always cast afresh."""
    global _shared_casts
    if _shared_casts is not None or torch.compiler.is_compiling():
        yield  # nested: the outer block's casts serve; compiled: Inductor fuses the casts itself
        return
    _shared_casts = {}
    try:
        yield
    finally:
        _shared_casts = None


def _cast_param(param: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`param` in `dtype`, from the block's shared casts where `weight_casts_shared` allows."""
    casts = _shared_casts
    if (
        casts is None
        or param.dtype == dtype
        or (param.requires_grad and torch.is_grad_enabled())
        or torch.compiler.is_compiling()
    ):
        return _cast(param, dtype)
    key = (id(param), dtype)  # the module holds the parameter for the whole block, so its id is stable
    cast = casts.get(key)
    if cast is None:
        cast = casts[key] = param.to(dtype)
    return cast


# Multiply-adds from which oneDNN's linear beats F.linear here (measured on 2 AVX-512
# cores: 1.7M slower, 3.4M faster, 30M+ 10-40% faster).
ONEDNN_MIN_MACS = 1 << 22


@functools.cache
def onednn_linear_available() -> bool:
    """Whether oneDNN's linear kernel (`mkldnn::_linear_pointwise`, the one Inductor emits on
    CPU) runs here and agrees with F.linear, plain and with the SiLU and multiply epilogues
    that SwiGLU uses. Probed once, on fixed values (no RNG draws), so a build without it,
    or one whose signature changed, falls back to F.linear."""
    if not torch.backends.mkldnn.is_available():
        return False
    x = torch.arange(24, dtype=torch.float32).view(4, 6) / 7
    w = torch.arange(18, dtype=torch.float32).view(3, 6).cos()
    b = torch.arange(3, dtype=torch.float32)
    other = torch.arange(12, dtype=torch.float32).view(4, 3).sin()
    expected = F.linear(x, w, b)
    try:
        got = (
            torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], ""),
            torch.ops.mkldnn._linear_pointwise(x, w, None, "swish", [], ""),
            torch.ops.mkldnn._linear_pointwise.binary(x, other, w, None, "mul"),
        )
    except (AttributeError, RuntimeError):
        return False
    plain = F.linear(x, w)
    return all(
        torch.allclose(g, e, rtol=1e-5, atol=1e-5) for g, e in zip(got, (expected, F.silu(plain), plain * other))
    )


class CastedLinear(nn.Module):
    """Linear layer with LeCun truncated-normal init, float32 storage, compute in the input's dtype."""

    onednn = True  # where available; see use_onednn_linear

    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.weight = nn.Parameter(trunc_normal_init_(torch.empty(out_features, in_features), std=in_features**-0.5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = _cast_param(self.weight, x.dtype)
        bias = None if self.bias is None else _cast_param(self.bias, x.dtype)
        if self._use_onednn(x):
            return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        if x.dtype == torch.bfloat16 and x.device.type == "cpu" and emulating_bfloat16():
            return emulated_linear(x, weight, bias)  # etrm.bfloat16: float32 speed on CPUs without bf16 units
        return F.linear(x, weight, bias)

    def _use_onednn(self, x: torch.Tensor) -> bool:
        """On CPU in float32, oneDNN's kernel runs the recursion's skinny products (inner
        dimension = hidden size) 10-40% faster than MKL's sgemm behind F.linear, but costs
        ~10 us more per call, so small products keep F.linear. It has no autograd
        formula: only gradient-free calls (most of the recursion) can take it."""
        return (
            CastedLinear.onednn
            and x.dtype == torch.float32
            and x.device.type == "cpu"
            and not torch.is_grad_enabled()
            and x.numel() * self.weight.shape[0] >= ONEDNN_MIN_MACS
            and not torch.compiler.is_compiling()
            and onednn_linear_available()
        )


def use_onednn_linear(enabled: bool = True) -> bool:
    """Whether large gradient-free float32 CPU products of every CastedLinear go through
    oneDNN's linear kernel where the build has it (on by default: about 10% off an
    official-size recursion step on 2 cores). Its summation order differs from MKL's, so
    turning it off moves outputs by float32 rounding (~1e-5 relative after a few ACT
    steps; the golden records are taken with it on). Returns the previous setting."""
    previous, CastedLinear.onednn = CastedLinear.onednn, bool(enabled)
    return previous


class CastedEmbedding(nn.Module):
    """Embedding table stored in float32, looked up in `cast_to`."""

    def __init__(self, num_embeddings: int, embedding_dim: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.embedding_weight = nn.Parameter(
            trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std)
        )

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, _cast(self.embedding_weight, self.cast_to))


class RotaryEmbedding(nn.Module):
    """RoPE tables (not saved in checkpoints), (positions, head_dim) each.

    `forward` returns `(cos, signed_sin)`: the sine with its first half negated, so that
    the official `x * cos + rotate_half(x) * sin` becomes `x * cos + roll(x) * signed_sin`
    (the same products, two kernels fewer: no negation, no separate add)."""

    def __init__(self, head_dim: int, max_positions: int, base: float):
        super().__init__()
        # Computed in float64, stored in float32: float32 sin/cos round differently on vector and
        # scalar CPU kernels, a rounded float64 value is the same on every CPU.
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        freqs = torch.outer(torch.arange(max_positions, dtype=torch.float64), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        sin = emb.sin().float()
        self.register_buffer("cos_cached", emb.cos().float(), persistent=False)
        self.register_buffer(
            "signed_sin_cached",
            torch.cat((-sin[:, : head_dim // 2], sin[:, head_dim // 2 :]), dim=-1),
            persistent=False,
        )

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cos_cached, self.signed_sin_cached


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, S, ..., head_dim) by position, computed in (at least) float32 like the official TRM.

    cos, signed_sin: (>= S, head_dim) tables of `RotaryEmbedding`. rotate_half(x) * sin ==
    roll(x, head_dim/2) * signed_sin; the roll is done as two half-width multiply-adds into
    the product, since torch.roll copies through a concatenation (7x the time of this)."""
    seq, dim = x.shape[1], x.shape[-1]
    table_shape = (seq,) + (1,) * (x.ndim - 3) + (dim,)  # broadcast over batch and heads
    cos, signed_sin = cos[:seq].view(table_shape), signed_sin[:seq].view(table_shape)
    xf, half = at_least_float32(x), dim // 2
    # The product is a fresh tensor, so the in-place adds are autograd-safe.
    out = xf * cos
    out[..., :half].addcmul_(xf[..., half:], signed_sin[..., :half])
    out[..., half:].addcmul_(xf[..., :half], signed_sin[..., half:])
    return out if out.dtype == x.dtype else out.to(x.dtype)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Weightless RMSNorm computed in (at least) float32 (a learned weight would break the official key layout).

    x * rsqrt(mean(x^2) + eps), with mean(x^2) from one fused norm reduction: two passes
    over x instead of the four of square/mean/add/multiply."""
    xf = at_least_float32(x)
    norm = torch.linalg.vector_norm(xf, dim=-1, keepdim=True)
    out = xf * norm.square().div(x.shape[-1]).add(eps).rsqrt()
    return out if out.dtype == x.dtype else out.to(x.dtype)


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
        qkv = self.qkv_proj(x).view(batch, seq, 3, self.num_heads, self.head_dim)
        if cos_sin is not None:  # q and k rotated together: one set of kernels for both
            q, k = apply_rotary(qkv[:, :, :2], *cos_sin).unbind(2)
        else:
            q, k = qkv[:, :, 0], qkv[:, :, 1]
        # (B, S, H, D) -> (B, H, S, D) views; SDPA's output keeps q's (B, S, H, D) memory
        # order, so merging the heads back below is a view, not a copy.
        out = attention(q.transpose(1, 2), k.transpose(1, 2), qkv[:, :, 2].transpose(1, 2))
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
        if self.gate_up_proj._use_onednn(x):
            return self.down_proj(self._onednn_hidden(x))
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        act = F.silu(gate)
        # In place on silu's fresh output when autograd is off; under autograd an in-place
        # multiply would make it save a copy of that output, so multiply out of place.
        return self.down_proj(act * up if act.requires_grad else act.mul_(up))

    def _onednn_hidden(self, x: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up with the SiLU and the product done in oneDNN's GEMM epilogues
        (two passes over the activations fewer: 5-7% off a mid-size recursion step)."""
        weight = self.gate_up_proj.weight
        inter = weight.shape[0] // 2
        gate = torch.ops.mkldnn._linear_pointwise(x, weight[:inter], None, "swish", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, gate, weight[inter:], None, "mul")


class TransformerBlock(nn.Module):
    """Self-attention + SwiGLU. Post-norm (the TRM decoder's) or pre-norm (an encoder variant)."""

    def __init__(self, hidden_size: int, num_heads: int, expansion: float, eps: float, norm_style: str = "post"):
        super().__init__()
        self.self_attn = Attention(hidden_size, num_heads)
        self.mlp = SwiGLU(hidden_size, expansion)
        self.eps = eps
        self.pre_norm = norm_style == "pre"

    def forward(self, x: torch.Tensor, cos_sin: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        # Residuals are added in place into the sublayer's fresh output (one tensor fewer;
        # autograd-safe: a linear layer's backward does not need its output).
        if self.pre_norm:
            x = self.self_attn(rms_norm(x, self.eps), cos_sin).add_(x)
            return self.mlp(rms_norm(x, self.eps)).add_(x)
        x = rms_norm(self.self_attn(x, cos_sin).add_(x), self.eps)
        return rms_norm(self.mlp(x).add_(x), self.eps)
