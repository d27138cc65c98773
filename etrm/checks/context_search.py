"""The free-context search: contexts optimised on their puzzles' demonstrations only, the
test-time latent search of Latent Program Networks. H7's headroom uses it as a probe
(`etrm.checks.h7_headroom`) and the evaluator as a remedy (`etrm evaluate --context-search`);
both run this one implementation.

Two rules make its answer one that can be read:

- **The step is in the model's units.** Adam's step is STEP_FRACTION of a scale that does not
  depend on where the search starts (`search_scale`): the TRM's trained puzzle embeddings
  when given, else the RMS the encoder's output is normalised to, else the encoder's contexts
  over many puzzles, else the decoder's input embeddings. A start at zero, or at a collapsed
  encoder's constant output, then moves as far as any other.
- **A search that did not lower its loss says nothing.** Per context, the demonstrations'
  loss after one ACT step from a fresh carry is taken at the start and at the searched
  context (`SearchResult.lowered`); a claim that rests on the search needs it lowered.

Each sample's loss depends only on its own context, and Adam is elementwise, so searching
many contexts in one batch gives each the steps a search of it alone would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from etrm.interface import ProtocolError, TRMInterface
from etrm.models.loss import IGNORE_LABEL_ID, stablemax_cross_entropy

STEP_FRACTION = 0.05  # Adam's step, as a fraction of the search scale: small steps
# A searched context "lowered" the loss when it is this much (relative) below the start's:
# more than float32 rounding of a mean over a few hundred tokens, far less than any real move.
LOWERED_BY = 1e-4
DEFAULT_SEARCH_STEPS = 8


@dataclass(frozen=True)
class SearchScale:
    rms: float  # the per-element RMS the decoder's contexts live at
    source: str  # where it was read, in words

    @property
    def lr(self) -> float:
        return STEP_FRACTION * self.rms


def search_scale(
    model: TRMInterface,
    trm_prefixes: Mapping[str, torch.Tensor] | None = None,
    contexts: torch.Tensor | None = None,
) -> SearchScale | None:
    """The scale the decoder was trained to read its context at, first found of: the TRM's
    puzzle embeddings, the encoder's declared output RMS (`TRMInterface.context_rms`), the
    RMS of the encoder's `contexts` over many puzzles (when not all zero), the decoder's input
    embeddings (a parameter named `embed_tokens`); None when there is none."""
    if trm_prefixes:
        rows = torch.stack([p.float() for p in trm_prefixes.values()])
        rms = _rms(rows[rows.abs().sum(-1) > 0])  # the zero-padded tail of a short embedding is no scale
        if rms > 0:
            return SearchScale(rms, f"the TRM's puzzle embeddings ({len(trm_prefixes)} puzzles)")
    if model.context_rms:
        return SearchScale(float(model.context_rms), "the RMS the encoder's output is normalised to")
    if contexts is not None and (rms := _rms(contexts.float())) > 0:
        return SearchScale(rms, f"the encoder's contexts over {len(contexts)} puzzles")
    params, _ = model.decoder_tensors()
    embeddings = [t for name, t in params.items() if "embed_tokens" in name]
    if embeddings and (rms := _rms(embeddings[0].detach().float())) > 0:
        return SearchScale(rms, "the decoder's input embeddings")
    return None


def _rms(values: torch.Tensor) -> float:
    return float(values.square().mean().sqrt()) if values.numel() else 0.0


def _lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) stablemax loss per sample, mean over its labelled tokens: the official loss head's
    `lm_loss` for one sample."""
    counts = (labels != IGNORE_LABEL_ID).sum(-1).clamp_min(1)
    return stablemax_cross_entropy(logits, labels).sum(-1) / counts


def sample_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[bool]]:
    """(loss, exact match) per sample."""
    valid = labels != IGNORE_LABEL_ID
    exact = ((logits.argmax(-1) == labels) | ~valid).all(-1) & valid.any(-1)
    return [float(x) for x in _lm_loss(logits, labels)], [bool(x) for x in exact]


def step_logits(step, labels: torch.Tensor, name: str) -> torch.Tensor:
    logits = step.outputs.get("logits") if hasattr(step.outputs, "get") else None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape[:2]) != tuple(labels.shape):
        raise ProtocolError(
            f"{name}: a step's outputs hold no 'logits' of shape {tuple(labels.shape)} + "
            "(vocab,) when asked with return_keys=['logits']"
        )
    return logits


def _first_step_losses(model: TRMInterface, batch: dict[str, torch.Tensor]) -> list[float]:
    """Per sample, the loss after one ACT step from a fresh carry (with whatever context reaches the decoder)."""
    with torch.no_grad():
        step = model.step(model.initial_carry(batch), batch, return_keys=("logits",))
    return sample_losses(step_logits(step, batch["labels"], model.name), batch["labels"])[0]


@dataclass(frozen=True)
class SearchResult:
    contexts: torch.Tensor  # (N, P, H) float32, searched
    start_loss: list[float]  # per context: its samples' mean first-step loss at the start...
    searched_loss: list[float]  # ...and at the searched context
    steps: int
    scale: SearchScale | None
    encoder_runs: int  # how often the encoder ran during the search (its output is replayed)
    seconds: float

    @property
    def lowered(self) -> list[bool]:
        return [b < a * (1 - LOWERED_BY) for a, b in zip(self.start_loss, self.searched_loss)]


def search_contexts(
    model: TRMInterface,
    batch: dict[str, torch.Tensor],
    starts: torch.Tensor,
    owners: torch.Tensor,
    steps: int,
    scale: SearchScale | None,
    seed: int = 0,
) -> SearchResult:
    """Contexts (N, P, H) started at `starts`, after `steps` Adam steps on the model's own loss
    of `batch`'s queries (its demonstrations as queries; sample b reads context `owners[b]`), in
    evaluation mode, one ACT step per Adam step with the carry kept (as training runs). No
    scale: no step is taken, and the result says the search did not lower any loss."""
    started = time.perf_counter()
    owners = owners.to(starts.device)
    free = torch.nn.Parameter(starts.detach().float().clone())
    fixed: list[torch.Tensor | None] = [starts.detach().float()[owners]]  # None while searching: `free`

    def replace(old: torch.Tensor) -> torch.Tensor:
        return (free[owners] if fixed[0] is None else fixed[0]).to(old.dtype)  # each sample its own context

    # One stand-in for the whole search, so the encoder runs once for these inputs, not once per step.
    with torch.random.fork_rng(devices=[]), model.mode(training=False), _weights_without_grad(model.head):
        torch.manual_seed(seed)
        with torch.enable_grad(), model.context_replaced(replace) as encoder:
            before = _first_step_losses(model, batch)
            if scale is not None and steps > 0:
                fixed[0] = None
                optimizer = torch.optim.Adam([free], lr=scale.lr)
                carry = model.initial_carry(batch)
                for _ in range(steps):
                    step = model.step(carry, batch)
                    carry = step.carry
                    optimizer.zero_grad()
                    step.loss.backward()  # the model's own loss: its outputs' logits come detached
                    optimizer.step()  # no gradient reaching the context leaves it where it is
            fixed[0] = free.detach()[owners]
            after = _first_step_losses(model, batch)
    return SearchResult(
        free.detach(),
        _per_owner(before, owners, len(starts)),
        _per_owner(after, owners, len(starts)),
        steps if scale is not None else 0,
        scale,
        encoder.runs,
        time.perf_counter() - started,
    )


@contextmanager
def _weights_without_grad(module: torch.nn.Module) -> Iterator[None]:
    """The search needs gradient for its contexts only: the model's weights are not
    differentiated (about a third of each backward), and their .grad is left as it was."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _per_owner(losses: list[float], owners: torch.Tensor, n: int) -> list[float]:
    totals, counts = [0.0] * n, [0] * n
    for loss, owner in zip(losses, owners.tolist()):
        totals[owner] += loss
        counts[owner] += 1
    return [t / c if c else math.nan for t, c in zip(totals, counts)]
