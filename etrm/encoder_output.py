"""Where an encoder's output holds the context, how to put another one in its place, and an
encoder stand-in that replays the encoder's output with the context replaced, so a search
over the context does not run the encoder at every step (`TRMInterface.context_replaced`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn


class ProtocolError(TypeError):
    """The model lacks part of the protocol; the message names the part."""


def context_tensor(
    output: Any, *, batch_size: int, puzzle_emb_len: int | None, hidden_size: int | None
) -> torch.Tensor:
    """The context in an encoder's output, by this rule, first match wins:
    1. the output is a tensor;
    2. it has a tensor attribute or key `context` (etrm's and the origin's EncoderOutput,
       ModelOutput-like dicts);
    3. it has a `get_context()` method returning a tensor (the origin's recurrent
       encoder carries, whose z_e / z_e_H both have the context's shape);
    4. of its fields (dataclass fields, tuple items, mapping values), the one tensor of
       shape (B, puzzle_emb_len, hidden); none or several is an error naming them."""
    if isinstance(output, torch.Tensor):
        return output
    named = output.get("context") if isinstance(output, Mapping) else getattr(output, "context", None)
    if isinstance(named, torch.Tensor):
        return named
    if callable(getattr(output, "get_context", None)):
        found = output.get_context()
        if isinstance(found, torch.Tensor):
            return found
    fields = _fields(output)
    shape = (batch_size, puzzle_emb_len, hidden_size)
    matches = [k for k, v in fields.items() if isinstance(v, torch.Tensor) and tuple(v.shape) == shape]
    if len(matches) == 1:
        return fields[matches[0]]
    seen = {k: tuple(v.shape) for k, v in fields.items() if isinstance(v, torch.Tensor)}
    raise ProtocolError(
        f"encoder output {type(output).__name__}: no tensor, 'context' or get_context(), and "
        f"{len(matches) or 'no'} field(s) of shape {shape} ({matches or seen}): cannot tell the context"
    )


class ContextNotReplaceable(ProtocolError):
    """The encoder's output holds its context in a way a hook cannot swap (e.g. only behind
    `get_context()`); checks that need a free context are inconclusive on such a model."""


def with_context(
    output: Any, context: torch.Tensor, *, batch_size: int, puzzle_emb_len: int | None, hidden_size: int | None
) -> Any:
    """`output` with its context (found by `context_tensor`'s rule) replaced by `context`,
    everything else unchanged: what a forward hook returns to substitute the context."""
    if isinstance(output, torch.Tensor):
        return context
    if isinstance(output, Mapping) and isinstance(output.get("context"), torch.Tensor):
        replaced = {**output, "context": context}
        return replaced if type(output) is dict else type(output)(replaced)
    if isinstance(getattr(output, "context", None), torch.Tensor):
        if dataclasses.is_dataclass(output) and not isinstance(output, type):
            return dataclasses.replace(output, context=context)
        if isinstance(output, tuple) and hasattr(output, "_replace"):  # a NamedTuple
            return output._replace(context=context)
        raise ContextNotReplaceable(
            f"encoder output {type(output).__name__}: its 'context' attribute is neither a "
            "dataclass field nor a NamedTuple field, so a hook cannot replace it"
        )
    if callable(getattr(output, "get_context", None)):
        raise ContextNotReplaceable(
            f"encoder output {type(output).__name__} gives its context only through "
            "get_context(), which a hook cannot replace"
        )
    fields = _fields(output)
    shape = (batch_size, puzzle_emb_len, hidden_size)
    matches = [k for k, v in fields.items() if isinstance(v, torch.Tensor) and tuple(v.shape) == shape]
    if len(matches) != 1 or not isinstance(output, tuple):
        raise ContextNotReplaceable(
            f"encoder output {type(output).__name__}: no single replaceable context field of shape {shape}"
        )
    items = list(output)
    items[int(matches[0][1:-1])] = context
    return type(output)(*items) if hasattr(output, "_fields") else type(output)(items)


def _fields(output: Any) -> dict[str, Any]:
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        return {f.name: getattr(output, f.name) for f in dataclasses.fields(output)}
    if isinstance(output, Mapping):
        return {str(k): v for k, v in output.items()}
    if isinstance(output, (tuple, list)):
        return {f"[{i}]": v for i, v in enumerate(output)}
    return {}


def batch_size_of(args: tuple, output: Any) -> int | None:
    """Samples in an encoder call: the leading size of its first tensor argument."""
    first = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if first is not None:
        return int(first.shape[0])
    found = output if isinstance(output, torch.Tensor) else None
    return None if found is None else int(found.shape[0])


def _tensors(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors among an encoder call's arguments (one level into mappings and sequences)."""
    found = []
    for value in (*args, *kwargs.values()):
        items = value.values() if isinstance(value, Mapping) else value if isinstance(value, (list, tuple)) else [value]
        found += [t for t in items if isinstance(t, torch.Tensor)]
    return found


def _same_inputs(old: list[torch.Tensor], new: list[torch.Tensor]) -> bool:
    return len(old) == len(new) and all(
        a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
        for a, b in zip(old, new)
    )


class ReplayedEncoder(nn.Module):
    """Stands in for `encoder` while its context is replaced: the encoder runs (without autograd,
    as nothing of its output but the replaced context reaches the decoder) only when its inputs
    differ from the last call's, and its output is otherwise replayed. `substitute(output, args)`
    puts the replacement context into an output. Searching a context over one task's
    demonstrations then runs the encoder once, not once per step; an encoder whose inputs
    change every step (a recurrent encoder's carry) runs every step, as before."""

    def __init__(self, encoder: nn.Module, substitute: Callable[[Any, tuple], Any]):
        super().__init__()
        # Held outside the module tree: the head's parameters and state_dict stay the encoder's own.
        self.__dict__["encoder"], self.__dict__["substitute"] = encoder, substitute
        self.__dict__["last"] = None
        self.runs, self.calling = 0, False

    def forward(self, *args, **kwargs):
        inputs = _tensors(args, kwargs)
        if self.last is None or not _same_inputs(self.last[0], inputs):
            self.calling = True
            try:
                with torch.no_grad():
                    output = self.encoder(*args, **kwargs)
            finally:
                self.calling = False
            self.__dict__["last"] = ([t.detach().clone() for t in inputs], output)
            self.runs += 1
        return self.substitute(self.last[1], args)
