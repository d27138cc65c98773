"""The adapter the model checks go through: the only code that touches a model.

A model is investigated through the protocol the official TRM trainer (pretrain.py) and
the origin ETRM trainer (pretrain_etrm.py) use, and nothing more, so etrm's own models
and a researcher's code (`--model-code`, see `etrm.model_code`) give their verdicts the
same way, as Hugging Face's ModelTesterMixin runs one check set over every model class:

| part | protocol |
|---|---|
| carry | `head.initial_carry(batch)`; the carry has a `halted` (B,) bool field |
| one ACT step | `head(carry=carry, batch=batch, return_keys=[...])` returns `(carry, loss, metrics, outputs, all_finish)` |
| batch | `inputs`, `labels` (-100 ignored), `puzzle_identifiers`, `demo_inputs`, `demo_labels`, `demo_mask` |
| encoder | the submodule named `encoder` (another name can be given); its parameters are the encoder's |
| decoder | every other parameter and persistent buffer of the head |
| context | the encoder's output, taken by a forward hook (rule: `context_tensor`) |

A check that needs what a model does not offer returns inconclusive naming it
(`TRMInterface.missing`); a model that breaks the protocol raises `ProtocolError`
naming what is missing, which is an error, never evidence.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, NamedTuple

import torch
from torch import nn

from etrm.bfloat16 import bfloat16_products_emulated
from etrm.encoder_output import (  # noqa: F401 (re-exported: the adapter's errors and rules)
    ContextNotReplaceable,
    ProtocolError,
    ReplayedEncoder,
    batch_size_of,
    context_tensor,
    with_context,
)

ENCODER_MODULE = "encoder"
PROTOCOL = "(carry, loss, metrics, outputs, all_finish) as the official ACTLossHead returns"


class ACTStep(NamedTuple):
    carry: Any
    loss: torch.Tensor
    metrics: Mapping
    outputs: Mapping
    all_finish: Any


class _Captured(Exception):
    """Raised by the context hook to stop a step once the encoder has answered."""


def find_encoder(head: nn.Module, name: str = ENCODER_MODULE) -> tuple[str, nn.Module] | None:
    """(path, module) of the shallowest submodule called `name`; None when there is none;
    ProtocolError when several sit at that depth."""
    found = [(path, m) for path, m in head.named_modules() if path.rsplit(".", 1)[-1] == name]
    if not found:
        return None
    depth = min(path.count(".") for path, _ in found)
    top = [(path, m) for path, m in found if path.count(".") == depth]
    if len(top) > 1:
        raise ProtocolError(
            f"{type(head).__name__}: several submodules named {name!r} ({', '.join(p for p, _ in top)}); "
            "name the encoder explicitly"
        )
    return top[0]


class TRMInterface:
    """One model behind the protocol above.

    `head` is the trainable unit (official: `ACTLossHead(model)`); `encoder` the demo
    encoder submodule (None: a TRM, or a model the checks cannot see an encoder in);
    `decoder` a module whose tensors are the decoder's (default: every head tensor
    outside the encoder). `puzzle_emb_len`, `hidden_size` and `forward_dtype` describe the
    context the decoder expects, `context_rms` the RMS its encoder's output is normalised to
    (None: not declared); `etrm_model` is set for etrm's own models only, for the
    checks that need their internals."""

    def __init__(
        self,
        head: nn.Module,
        *,
        halt_max_steps: int,
        encoder: nn.Module | None = None,
        decoder: nn.Module | None = None,
        puzzle_emb_len: int | None = None,
        hidden_size: int | None = None,
        forward_dtype: str | None = None,
        halt_exploration_prob: float | None = None,
        etrm_model: nn.Module | None = None,
        name: str | None = None,
        encoder_name: str = ENCODER_MODULE,
        context_rms: float | None = None,
    ):
        self.name = name or type(head).__name__
        if not isinstance(head, nn.Module):
            raise ProtocolError(f"{self.name}: the loss head must be a torch.nn.Module, got {type(head).__name__}")
        if not callable(getattr(head, "initial_carry", None)):
            raise ProtocolError(f"{self.name}: the loss head has no initial_carry(batch)")
        if not isinstance(halt_max_steps, int) or halt_max_steps < 1:
            raise ProtocolError(f"{self.name}: halt_max_steps must be a positive int, got {halt_max_steps!r}")
        self.head, self.encoder, self.decoder = head, encoder, decoder
        self.halt_max_steps = halt_max_steps
        self.puzzle_emb_len, self.hidden_size, self.forward_dtype = puzzle_emb_len, hidden_size, forward_dtype
        self.halt_exploration_prob = halt_exploration_prob
        self.etrm_model = etrm_model
        self.encoder_name = encoder_name
        self.context_rms = context_rms

    @classmethod
    def from_etrm(cls, head: nn.Module) -> TRMInterface:
        """etrm's own `LossHead`, behind the same protocol as any other model."""
        model, cfg = head.model, head.config
        return cls(
            head,
            halt_max_steps=cfg.halt_max_steps,
            encoder=getattr(model, "encoder", None),
            decoder=model.inner,
            puzzle_emb_len=cfg.puzzle_emb_len,
            hidden_size=cfg.hidden_size,
            forward_dtype=cfg.forward_dtype,
            halt_exploration_prob=cfg.halt_exploration_prob,
            etrm_model=model,
            name=f"etrm {type(model).__name__}",
            context_rms=1.0,  # every etrm encoder ends in an RMS norm without a gain
        )

    # --- capabilities ------------------------------------------------------------------------
    @property
    def has_encoder(self) -> bool:
        return self.encoder is not None

    @property
    def captures_context(self) -> bool:
        return self.has_encoder

    @property
    def is_etrm(self) -> bool:
        return self.etrm_model is not None

    def missing(self, *needs: str) -> str | None:
        """Why a check cannot run on this model ("encoder", "context_shape", "exploration",
        "etrm"), or None when it has everything."""
        why = {
            "encoder": (
                not self.has_encoder,
                f"{self.name} has no demo encoder (no submodule named {self.encoder_name!r})",
            ),
            "context_shape": (
                None in (self.puzzle_emb_len, self.hidden_size, self.forward_dtype),
                f"{self.name} does not say the prefix shape/dtype its decoder expects",
            ),
            "exploration": (self.halt_exploration_prob is None, f"{self.name} does not say its halt_exploration_prob"),
            "etrm": (not self.is_etrm, f"needs an etrm model: {self.name} is not one of etrm's classes"),
        }
        unknown = sorted(set(needs) - set(why))
        if unknown:
            raise ValueError(f"unknown capabilities {unknown}; known: {sorted(why)}")
        reasons = [why[n][1] for n in needs if why[n][0]]
        return "; ".join(reasons) or None

    # --- the protocol ------------------------------------------------------------------------
    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Any:
        carry = self.head.initial_carry(batch)
        if not hasattr(carry, "halted"):
            raise ProtocolError(f"{self.name}: initial_carry returned {type(carry).__name__} without a 'halted' field")
        return carry

    def step(self, carry: Any, batch: dict[str, torch.Tensor], return_keys: Sequence[str] = ()) -> ACTStep:
        """One ACT step, called as the official trainer calls it (keywords only)."""
        # Foreign code's bfloat16 products at float32 speed on CPUs without bf16 units
        # (etrm.bfloat16); etrm's own layers do this themselves.
        with nullcontext() if self.is_etrm else bfloat16_products_emulated():
            result = self.head(carry=carry, batch=batch, return_keys=list(return_keys))
        if not isinstance(result, tuple) or len(result) != 5:
            got = f"a {len(result)}-tuple" if isinstance(result, tuple) else type(result).__name__
            raise ProtocolError(f"{self.name}: one step returned {got}, expected {PROTOCOL}")
        step = ACTStep(*result)
        if not isinstance(step.loss, torch.Tensor) or step.loss.numel() != 1:
            raise ProtocolError(
                f"{self.name}: the step's loss (2nd item) is {type(step.loss).__name__}, "
                f"not a scalar tensor; expected {PROTOCOL}"
            )
        if not hasattr(step.carry, "halted"):
            raise ProtocolError(f"{self.name}: the step's carry {type(step.carry).__name__} has no 'halted' field")
        return step

    def without_resets(self, carry: Any) -> Any:
        """The carry with no sample halted, so the next step resets none."""
        try:
            carry.halted = torch.zeros_like(carry.halted)
        except dataclasses.FrozenInstanceError:
            carry = dataclasses.replace(carry, halted=torch.zeros_like(carry.halted))
        return carry

    @contextmanager
    def mode(self, training: bool) -> Iterator[TRMInterface]:
        """Training or evaluation mode for the duration, restored afterwards."""
        was_training = self.head.training
        self.head.train(training)
        try:
            yield self
        finally:
            self.head.train(was_training)

    def first_context(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The context the encoder gives the decoder on each sample's first ACT step, in
        evaluation mode without gradient. The step stops once the encoder has answered, so
        the decoder does not run (and a malformed context is reported, not crashed on)."""
        if self.encoder is None:
            raise ProtocolError(self.missing("encoder"))
        captured: list[torch.Tensor] = []

        def hook(_module, _args, output):
            captured.append(
                context_tensor(
                    output,
                    batch_size=batch["inputs"].shape[0],
                    puzzle_emb_len=self.puzzle_emb_len,
                    hidden_size=self.hidden_size,
                )
            )
            raise _Captured

        handle = self.encoder.register_forward_hook(hook)
        try:
            with self.mode(training=False), torch.no_grad():
                try:
                    self.step(self.initial_carry(batch), batch)
                except _Captured:
                    pass
        finally:
            handle.remove()
        if not captured:
            raise ProtocolError(
                f"{self.name}: the {self.encoder_name!r} submodule was not called on a sample's first "
                "ACT step, so its output cannot be taken as the context"
            )
        return captured[0]

    @contextmanager
    def context_replaced(self, replace: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[ReplayedEncoder]:
        """While active, the encoder's output reaches the decoder with its context replaced
        by `replace(context)` (same shape). Gradient flows into what `replace` returns whenever
        it is enabled where the context manager was entered, even if the model runs its encoder
        without autograd. The encoder submodule is swapped for a `ReplayedEncoder` for the
        duration, so it runs only when its inputs change (once per task in a context search);
        a model that calls its encoder by another route still gets the replacement, through a
        forward hook on the encoder itself. Yields the stand-in (its `runs` counts the encoder's runs)."""
        if self.encoder is None:
            raise ProtocolError(self.missing("encoder"))
        grad = torch.is_grad_enabled()

        def substitute(output, args):
            with torch.set_grad_enabled(grad):
                old = context_tensor(
                    output,
                    batch_size=batch_size_of(args, output),
                    puzzle_emb_len=self.puzzle_emb_len,
                    hidden_size=self.hidden_size,
                )
                new = replace(old)
                if tuple(new.shape) != tuple(old.shape):
                    raise ProtocolError(
                        f"{self.name}: a replacement context of shape {tuple(new.shape)} for the "
                        f"encoder's {tuple(old.shape)}"
                    )
                return with_context(
                    output,
                    new.to(old.dtype),
                    batch_size=old.shape[0],
                    puzzle_emb_len=self.puzzle_emb_len,
                    hidden_size=self.hidden_size,
                )

        stand_in = ReplayedEncoder(self.encoder, substitute)
        place = self._encoder_place()
        # Calls that bypass the stand-in get the replacement here; the stand-in's own call gets None
        # (its output unchanged), since it substitutes the context into the output it replays.
        handle = self.encoder.register_forward_hook(
            lambda _m, args, output: None if stand_in.calling else substitute(output, args)
        )
        if place is not None:
            setattr(*place, stand_in)
        try:
            yield stand_in
        finally:
            if place is not None:
                setattr(*place, self.encoder)
            handle.remove()

    def _encoder_place(self) -> tuple[nn.Module, str] | None:
        """(parent module, attribute) holding the encoder in the head; None if it is not a submodule."""
        for parent in self.head.modules():
            for name, child in parent.named_children():
                if child is self.encoder:
                    return parent, name
        return None

    # --- parameters --------------------------------------------------------------------------
    def encoder_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name inside the encoder, parameter); empty without an encoder."""
        return [] if self.encoder is None else list(self.encoder.named_parameters())

    def decoder_tensors(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(parameters, persistent buffers) of the decoder, named as in the head's
        state_dict (`model.inner.H_init`), i.e. as a checkpoint's keys without wrappers."""
        state = self.head.state_dict(keep_vars=True)
        param_ids = {id(p) for p in self.head.parameters()}
        own = None if self.decoder is None else {id(t) for t in (*self.decoder.parameters(), *self.decoder.buffers())}
        enc = set() if self.encoder is None else {id(t) for t in (*self.encoder.parameters(), *self.encoder.buffers())}
        chosen = {k: t for k, t in state.items() if id(t) not in enc and (own is None or id(t) in own)}
        params = {k: t for k, t in chosen.items() if id(t) in param_ids}
        return params, {k: t for k, t in chosen.items() if k not in params}

    def __repr__(self) -> str:
        return f"TRMInterface({self.name}, encoder={'yes' if self.has_encoder else 'no'}, etrm={self.is_etrm})"


def as_interface(model: Any) -> TRMInterface:
    """`model` itself when it is a TRMInterface; etrm's `LossHead` wrapped by `from_etrm`."""
    if isinstance(model, TRMInterface):
        return model
    from etrm.models import LossHead

    if isinstance(model, LossHead):
        return TRMInterface.from_etrm(model)
    raise ProtocolError(
        f"expected a TRMInterface or an etrm LossHead, got {type(model).__name__}: wrap your model "
        "with etrm.interface.TRMInterface or load it with etrm.model_code.load_model_code"
    )
