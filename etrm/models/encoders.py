"""Demonstration encoders: demo pairs -> a (B, puzzle_emb_len, hidden) context.

Per demo pair a grid transformer reads input and output tokens (separate
embeddings, RoPE over 2 x seq_len positions) and pools them to one vector; a set
encoder of learned query tokens cross-attends to the demo vectors (no positions,
padded slots masked), so the context depends neither on demo order nor on what
sits in padded slots. Module names follow the origin ETRM checkpoints
(`grid_encoder.*`, `set_encoder.*`, DESIGN.md section 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from etrm.bfloat16 import attention
from etrm.config import ENCODER_TYPES, ConfigError, ModelConfig
from etrm.layers import (
    CastedEmbedding,
    CastedLinear,
    RotaryEmbedding,
    SwiGLU,
    TransformerBlock,
    at_least_float32,
    rms_norm,
    trunc_normal_init_,
)

PAD_ID = 0


@dataclass
class EncoderOutput:
    context: torch.Tensor  # (B, puzzle_emb_len, hidden), every token of RMS 1
    kl: torch.Tensor | None = None  # (B,) per-sample KL for the variational encoder


class GridPairEncoder(nn.Module):
    """One vector per demo pair: transformer over [input tokens; output tokens], pooled."""

    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        h = config.hidden_size
        self.dtype = dtype
        self.eps = config.rms_norm_eps
        self.scale = math.sqrt(h)
        self.pooling = config.encoder_pooling_method
        self.pre_norm = config.encoder_norm_style == "pre"
        self.input_embed = CastedEmbedding(config.vocab_size, h, init_std=1.0 / self.scale, cast_to=dtype)
        self.output_embed = CastedEmbedding(config.vocab_size, h, init_std=1.0 / self.scale, cast_to=dtype)
        self.rotary_emb = RotaryEmbedding(h // config.num_heads, 2 * config.seq_len, config.rope_theta)
        self.layers = nn.ModuleList(
            [
                TransformerBlock(h, config.num_heads, config.expansion, config.rms_norm_eps, config.encoder_norm_style)
                for _ in range(config.encoder_num_layers)
            ]
        )
        if self.pooling == "attention":  # a learned query attends over the pair's tokens
            self.pool_query = nn.Parameter(trunc_normal_init_(torch.empty(h), std=0.02))
        elif self.pooling == "weighted":  # a learned per-token score
            self.pool_score = CastedLinear(h, 1, bias=False)  # a bias would shift every score alike: no gradient
        self.pool_proj = CastedLinear(h, h, bias=False)

    def forward(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """inputs, labels: (N, seq_len) tokens of N demo pairs -> (N, hidden)."""
        tokens = torch.cat((inputs, labels), dim=-1).long()
        x = torch.cat((self.input_embed(inputs.long()), self.output_embed(labels.long())), dim=-2) * self.scale
        cos_sin = self.rotary_emb()
        for layer in self.layers:
            x = layer(x, cos_sin)
        if self.pre_norm:
            x = rms_norm(x, self.eps)
        keep = tokens != PAD_ID  # EOS counts as content: it marks the grid's extent
        if self.pooling == "mean":
            # Sum, then divide by the count (as the origin ETRM): a bfloat16-rounded 1/count
            # weight would scale every demo vector by up to 1 +- 2^-9.
            count = keep.sum(-1, keepdim=True).clamp_min(1).to(x.dtype)
            return self.pool_proj(torch.einsum("ns,nsh->nh", keep.to(x.dtype), x) / count)
        scores = (
            (x @ self.pool_query.to(x.dtype)) / self.scale
            if self.pooling == "attention"
            else self.pool_score(x).squeeze(-1)
        )
        weights = torch.softmax(at_least_float32(scores).masked_fill(~keep, float("-inf")), dim=-1)
        weights = torch.nan_to_num(weights).to(x.dtype)  # an all-PAD pair pools to zero
        return self.pool_proj(torch.einsum("ns,nsh->nh", weights, x))


class SetAttentionLayer(nn.Module):
    """Queries cross-attend to the demo vectors (padded slots masked), then SwiGLU."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        h = config.hidden_size
        self.num_heads = config.num_heads
        self.eps = config.rms_norm_eps
        self.pre_norm = config.encoder_norm_style == "pre"
        self.q_proj = CastedLinear(h, h)
        self.k_proj = CastedLinear(h, h)
        self.v_proj = CastedLinear(h, h)
        self.o_proj = CastedLinear(h, h)
        self.mlp = SwiGLU(h, config.expansion)

    def attend(self, queries: torch.Tensor, demos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, p, h = queries.shape
        d = demos.shape[1]
        heads = lambda t, n: t.view(b, n, self.num_heads, h // self.num_heads).transpose(1, 2)  # noqa: E731
        q, k, v = heads(self.q_proj(queries), p), heads(self.k_proj(demos), d), heads(self.v_proj(demos), d)
        out = attention(q, k, v, attn_mask=mask[:, None, None, :])
        return self.o_proj(out.transpose(1, 2).reshape(b, p, h))

    def forward(self, queries: torch.Tensor, demos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            queries = queries + self.attend(rms_norm(queries, self.eps), demos, mask)
            return queries + self.mlp(rms_norm(queries, self.eps))
        queries = rms_norm(queries + self.attend(queries, demos, mask), self.eps)
        return rms_norm(queries + self.mlp(queries), self.eps)


class SetEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.query_tokens = nn.Parameter(
            trunc_normal_init_(torch.empty(config.puzzle_emb_len, config.hidden_size), std=0.02)
        )
        self.layers = nn.ModuleList([SetAttentionLayer(config) for _ in range(config.encoder_set_layers)])

    def forward(self, demos: torch.Tensor, mask: torch.Tensor, query: torch.Tensor | None = None) -> torch.Tensor:
        """demos (B, D, h), mask (B, D) -> (B, puzzle_emb_len, h) before the final norm.
        `query` (B, P, h), if given, is added to the learned query tokens (ETRMTRM's carry)."""
        x = self.query_tokens.to(demos.dtype).expand(demos.shape[0], -1, -1)
        if query is not None:
            x = x + query.to(demos.dtype)
        for layer in self.layers:
            x = layer(x, demos, mask)
        return x


class DemoEncoder(nn.Module):
    """The standard encoder: grid-pair encoder, set encoder, final weightless RMSNorm."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.dtype = getattr(torch, config.forward_dtype)
        self.grid_encoder = GridPairEncoder(config, self.dtype)
        self.set_encoder = SetEncoder(config)

    def demo_vectors(
        self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor
    ) -> torch.Tensor:
        """(B, D, S) pairs -> (B, D, h); only valid slots are computed, padded slots are exactly 0."""
        b, d, s = demo_inputs.shape
        valid = demo_mask.reshape(-1)
        encoded = self.grid_encoder(demo_inputs.reshape(-1, s)[valid], demo_labels.reshape(-1, s)[valid])
        out = encoded.new_zeros(b * d, encoded.shape[-1])
        out[valid] = encoded
        return out.view(b, d, -1)

    def set_output(self, demo_inputs, demo_labels, demo_mask, query=None) -> torch.Tensor:
        demo_mask = demo_mask.bool()
        vectors = self.demo_vectors(demo_inputs, demo_labels, demo_mask)
        # A sample without any valid demo attends to its (all-zero) slots rather than to
        # nothing, which would give NaN; its context then comes from the queries alone.
        attend_mask = demo_mask | ~demo_mask.any(dim=1, keepdim=True)
        return self.set_encoder(vectors, attend_mask, query)

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        x = self.set_output(demo_inputs, demo_labels, demo_mask, query)
        return EncoderOutput(context=rms_norm(x, self.config.rms_norm_eps))


class VariationalDemoEncoder(DemoEncoder):
    """Context sampled from N(mu, exp(logvar)) in training, the mean in evaluation, with a KL term."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        h = config.hidden_size
        self.mu_proj = CastedLinear(h, h)
        self.logvar_proj = CastedLinear(h, h)

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        x = self.set_output(demo_inputs, demo_labels, demo_mask, query)
        mu = at_least_float32(self.mu_proj(x))
        logvar = at_least_float32(self.logvar_proj(x)).clamp(-10.0, 10.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=(1, 2))
        return EncoderOutput(context=rms_norm(z, self.config.rms_norm_eps).to(x.dtype), kl=kl)


ENCODERS: dict[str, type[DemoEncoder]] = {"standard": DemoEncoder, "variational": VariationalDemoEncoder}
assert tuple(ENCODERS) == ENCODER_TYPES


def build_encoder(config: ModelConfig) -> DemoEncoder:
    """Encoder by `config.encoder_type`; an unknown name lists the valid ones."""
    try:
        cls = ENCODERS[config.encoder_type]
    except KeyError:
        raise ConfigError(f"unknown encoder_type {config.encoder_type!r}; valid: {', '.join(ENCODERS)}") from None
    return cls(config)
