"""Encoders of the H7 known-answer cases (fixtures/make_h7_cases.py), each built so that one
answer holds by construction. Each wraps the model's own encoder (kept, unused, so the
checkpoint loads as an ordinary ETRM) and keeps its own tensors in a small file beside the
checkpoint (`ENCODER_FILE`), written by `save_encoder_state` and read by `wrap_saved`.

- `DemoHashEncoder`: a learned context row per training puzzle, chosen by a hash of the
  demonstrations' tokens; demonstrations it never saw land on some training puzzle's row
  (hash modulo the rows). It memorises, and cannot carry a new puzzle's rule.
- `RuleOracleEncoder`: reads the colour shift (output colour minus input colour, modulo 9,
  the most common over the demos' coloured cells) and returns a learned context per shift.
  It carries every rule of the colour-shift tasks, whatever the puzzle.
- `NegatedShiftedEmbeddingEncoder`: the TRM's puzzle embedding of the puzzle whose demos these
  are (looked up by the same hash), negated and moved one prefix slot later. A linear map
  takes it back onto the embedding exactly, yet the decoder was trained on the embedding itself.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from etrm.models.encoders import EncoderOutput

ENCODER_FILE = "encoder_state.pt"
COLOURS = 9  # the colour-shift tasks' non-background colours (1..9)
FIRST_COLOUR_TOKEN = 3  # token = colour + 2 (0 pad, 1 end of row); colour 0 (background) is token 2


def demo_key(demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor) -> torch.Tensor:
    """(B,) int64: a deterministic hash of each sample's valid demonstrations' tokens (a
    weighted sum with fixed, position-dependent weights; padded demo slots count as zeros)."""
    tokens = torch.cat([demo_inputs, demo_labels], -1).long() * demo_mask[..., None].long()
    flat = tokens.flatten(1)
    positions = torch.arange(flat.shape[1], device=flat.device, dtype=torch.long)
    weights = (positions * 2654435761 + 97) % 1_000_003 + 1
    return (flat * weights).sum(1)


def colour_shift(demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor) -> torch.Tensor:
    """(B,) long in 0..8: the most common (output colour - input colour) mod 9 over the valid
    demos' cells coloured in both grids (0 where there is none)."""
    inputs, labels = demo_inputs.long(), demo_labels.long()
    coloured = (inputs >= FIRST_COLOUR_TOKEN) & (labels >= FIRST_COLOUR_TOKEN) & demo_mask[..., None].bool()
    shift = (labels - inputs) % COLOURS
    votes = torch.nn.functional.one_hot(shift, COLOURS) * coloured[..., None]
    return votes.flatten(1, 2).sum(1).argmax(-1)


class _StateEncoder(nn.Module):
    """Wraps the model's encoder (its weights kept, unused) and returns its own context."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.inner = encoder
        self.config = encoder.config

    def _shape(self) -> tuple[int, int]:
        return self.config.puzzle_emb_len, self.config.hidden_size


class DemoHashEncoder(_StateEncoder):
    """A learned (P, H) row per training puzzle, keyed by `demo_key`; unknown demos take row
    key mod rows, i.e. some training puzzle's."""

    def __init__(self, encoder: nn.Module, keys: torch.Tensor):
        super().__init__(encoder)
        if len(set(keys.tolist())) != len(keys):
            raise ValueError("two training puzzles share a demo key: the memoriser needs one row each")
        self.register_buffer("keys", keys.long().clone())
        self.rows = nn.Parameter(torch.zeros(len(keys), *self._shape()))

    def row_index(self, demo_inputs, demo_labels, demo_mask) -> torch.Tensor:
        key = demo_key(demo_inputs, demo_labels, demo_mask)
        match = key[:, None] == self.keys[None]
        return torch.where(match.any(1), match.long().argmax(1), key % len(self.keys))

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        return EncoderOutput(context=self.rows[self.row_index(demo_inputs, demo_labels, demo_mask)])


class RuleOracleEncoder(_StateEncoder):
    """A learned (P, H) context per colour shift, the shift read from the demos."""

    def __init__(self, encoder: nn.Module):
        super().__init__(encoder)
        self.rows = nn.Parameter(torch.randn(COLOURS, *self._shape()) * 0.02)

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        return EncoderOutput(context=self.rows[colour_shift(demo_inputs, demo_labels, demo_mask)])


class NegatedShiftedEmbeddingEncoder(_StateEncoder):
    """Minus the TRM's embedding (`embeddings[i]`, (P, H), for the puzzle of demo key `keys[i]`),
    rolled one prefix slot later; unknown demos get zeros."""

    def __init__(self, encoder: nn.Module, keys: torch.Tensor, embeddings: torch.Tensor | None = None):
        super().__init__(encoder)
        self.register_buffer("keys", keys.long().clone())
        shape = (len(keys), *self._shape())
        self.register_buffer("embeddings", torch.zeros(shape) if embeddings is None else embeddings.float().clone())

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        key = demo_key(demo_inputs, demo_labels, demo_mask)
        match = (key[:, None] == self.keys[None]).float()
        return EncoderOutput(context=torch.einsum("bn,nph->bph", match, self.embeddings).neg().roll(1, dims=1))


ENCODERS = {cls.__name__: cls for cls in (DemoHashEncoder, RuleOracleEncoder, NegatedShiftedEmbeddingEncoder)}


def save_encoder_state(head, folder: Path) -> None:
    """Unwrap `head`'s encoder (the checkpoint then holds the model's own encoder keys) and
    write the wrapper's class and tensors to `folder / ENCODER_FILE`."""
    wrapper = head.model.encoder
    own = {k: v.detach().cpu() for k, v in wrapper.state_dict().items() if not k.startswith("inner.")}
    torch.save({"class": type(wrapper).__name__, "state": own}, Path(folder) / ENCODER_FILE)
    head.model.encoder = wrapper.inner


def wrap_saved(head, folder: Path):
    """`head` with its encoder wrapped as saved in `folder / ENCODER_FILE`."""
    saved = torch.load(Path(folder) / ENCODER_FILE, weights_only=True)
    cls, state = ENCODERS[saved["class"]], saved["state"]
    inner = head.model.encoder
    wrapper = cls(inner, state["keys"]) if "keys" in state else cls(inner)
    wrapper.load_state_dict({**state, **{f"inner.{k}": v for k, v in inner.state_dict().items()}})
    head.model.encoder = wrapper
    return head
