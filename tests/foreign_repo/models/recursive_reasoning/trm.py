"""TinyRecursiveReasoningModel_ACTV1 as in the official TRM's models/recursive_reasoning/trm.py,
reduced to what this stand-in needs: the same decoder, its prefix a learned embedding per
puzzle identifier (zero-initialised, as the official sparse embedding) instead of a demo
encoder. A model without an encoder: the encoder checks do not apply to it."""

import torch
from torch import nn

from models.common import config_from_dict
from models.layers import CastedEmbedding
from models.recursive_reasoning.etrm import TRMEncoderConfig, TRMEncoderInner, TRMWithEncoder


class TinyRecursiveReasoningModel_ACTV1(TRMWithEncoder):
    def __init__(self, config_dict: dict):
        nn.Module.__init__(self)  # TRMWithEncoder's would build a demo encoder
        self.config = config_from_dict(TRMEncoderConfig, config_dict)
        cfg = self.config
        if not 0 < cfg.puzzle_emb_ndim <= cfg.puzzle_emb_len * cfg.hidden_size:
            raise ValueError(f"puzzle_emb_ndim {cfg.puzzle_emb_ndim} must be in 1..puzzle_emb_len * hidden_size")
        self.inner = TRMEncoderInner(cfg)
        self.puzzle_emb = CastedEmbedding(
            cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim, init_std=1.0, cast_to=getattr(torch, cfg.forward_dtype)
        )
        with torch.no_grad():
            self.puzzle_emb.embedding_weight.zero_()

    def encode(self, carry, data: dict[str, torch.Tensor], needs_reset: torch.Tensor):
        cfg = self.config
        embedding = self.puzzle_emb(data["puzzle_identifiers"].to(torch.int32))
        padded = nn.functional.pad(embedding, (0, cfg.puzzle_emb_len * cfg.hidden_size - cfg.puzzle_emb_ndim))
        return padded.view(-1, cfg.puzzle_emb_len, cfg.hidden_size), {}, None
