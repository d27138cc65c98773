"""Step-by-step parity with outputs that upstream code computed on its own checkpoints.

Each checkpoint folder of the interop corpus (fixtures/interop, see its README) holds
`reference.pt`, the upstream model's outputs on a fixed batch for a few ACT steps, and
`reference.json`, how they were computed: eval mode, no_grad, `initial_carry(batch)`,
then one call per step on the same batch. `replay` runs that procedure on our model
and `first_mismatch` names the first step and tensor that differ beyond tolerance.

Tolerances depend on the model's forward dtype and on where a tensor comes from:

- float32: elementwise (1e-4, 1e-4), the golden records' float32 tolerance;
- bfloat16, one feed-forward pass (the encoder context): elementwise rtol 1.6e-2
  (4 roundings) and atol 2e-2 (2.5 roundings of an RMS-1 value): the encoder's
  three blocks round a few times;
- bfloat16 after the recursion (logits, Q logits): norm-wise, relative to our own
  rounding error. The recursion amplifies single roundings chaotically: with the
  origin ETRM's L_cycles 6, one flipped last bit of one context value moves single
  logits by 0.3-0.6 while the tensor as a whole moves by ~2% RMS. So an elementwise
  bound is either loose enough to pass a wrong model or fails a right one. What must
  hold is that our bfloat16 run is no farther from the reference than `ROUNDING_FACTOR`
  times its own distance from our float32 run on the same weights (its rounding
  error), and never less than one bfloat16 step (2^-7, relative): two results rounded
  to bfloat16 apart can land one unit in the last place apart (-5.0 and -5.03125 for
  a Q logit under ATen's AVX2 kernels, 2^-7.3 relative), however close the sums. A real
  difference (a wrong L_cycles, a weight off by 1e-3) moves the float32 run too, so
  it shows as a distance well above the rounding error.

Who uses it: the tests only, today: `tests/test_interop_parity.py` (our models against the
official TRM's and origin ETRM's own outputs in the interop corpus) and `tests/test_parity.py`
(the tolerances and their negative controls). It stays in the package, in its bottom layer
(it imports nothing from etrm), because it is a tool, not a test: `Reference.load` +
`replay` + `first_mismatch` compare any ACT model with reference files written by upstream
code by the procedure in `fixtures/interop/README.md` ("Reference outputs"), for a
user who writes them from their own checkout.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

REFERENCE_FILE = "reference.pt"
PROCEDURE_FILE = "reference.json"
# Compared in this order within a step, so that the first mismatch is the earliest stage.
OUTPUT_KEYS = ("context", "logits", "q_halt_logits", "q_continue_logits", "steps", "halted")
RECURSION_KEYS = ("logits", "q_halt_logits", "q_continue_logits")
ROUNDING_FACTOR = 1.5
BFLOAT16_STEP = 2.0**-7  # the spacing of bfloat16 values at the bottom of a binade, relative


class ParityError(ValueError):
    """A reference folder or an output cannot be used; the message names it."""


@dataclass(frozen=True)
class Tolerance:
    """Elementwise `|ours - ref| <= atol + rtol * |ref|`, or, with `rounding_factor`, norm-wise
    `||ours - ref|| <= max(rounding_factor * ||ours - exact||, floor * ||ref||)`."""

    rtol: float = 0.0
    atol: float = 0.0
    rounding_factor: float | None = None
    floor: float = 0.0


FLOAT32 = Tolerance(rtol=1e-4, atol=1e-4)
BFLOAT16_PASS = Tolerance(rtol=1.6e-2, atol=2e-2)
BFLOAT16_RECURSION = Tolerance(rounding_factor=ROUNDING_FACTOR, floor=BFLOAT16_STEP)
EXACT = Tolerance()


def tolerance_for(forward_dtype: str, key: str) -> Tolerance:
    """The tolerance for output `key` of a model computing in `forward_dtype`."""
    if key in ("steps", "halted"):
        return EXACT
    if forward_dtype == "float32":
        return FLOAT32
    if forward_dtype == "bfloat16":
        return BFLOAT16_RECURSION if key in RECURSION_KEYS else BFLOAT16_PASS
    raise ParityError(f"no parity tolerance for forward_dtype {forward_dtype!r}; known: float32, bfloat16")


@dataclass(frozen=True)
class Reference:
    """A folder's reference outputs: the batch, and per ACT step the outputs by key."""

    folder: Path
    batch: dict[str, torch.Tensor]
    steps: list[dict[str, torch.Tensor]]
    forward_dtype: str

    @classmethod
    def load(cls, folder: str | Path) -> Reference:
        folder = Path(folder)
        pt, js = folder / REFERENCE_FILE, folder / PROCEDURE_FILE
        for path in (pt, js):
            if not path.is_file():
                raise ParityError(f"{path}: missing (a reference folder holds {REFERENCE_FILE} and {PROCEDURE_FILE})")
        procedure = json.loads(js.read_text())
        try:
            count, dtype = int(procedure["steps"]), str(procedure["forward_dtype"])
        except KeyError as e:
            raise ParityError(f"{js}: no {e.args[0]!r} key") from None
        tensors = torch.load(pt, map_location="cpu", weights_only=True)
        batch = {k.removeprefix("batch."): v for k, v in tensors.items() if k.startswith("batch.")}
        if not batch:
            raise ParityError(f"{pt}: no batch.* tensors")
        steps = [
            {k.removeprefix(f"step{i}."): v for k, v in tensors.items() if k.startswith(f"step{i}.")}
            for i in range(1, count + 1)
        ]
        if missing := [i + 1 for i, s in enumerate(steps) if "logits" not in s]:
            raise ParityError(f"{pt}: no step{missing[0]}.logits although {js.name} says {count} steps")
        return cls(folder, batch, steps, dtype)


def replay(
    model: torch.nn.Module, batch: Mapping[str, torch.Tensor], steps: int, context: torch.Tensor | None = None
) -> list[dict[str, torch.Tensor]]:
    """The reference procedure on an ACT model: eval, no_grad, `initial_carry(batch)`, then
    `steps` calls on the same batch; per step the outputs and the carry's steps/halted.
    `context`, if given, replaces the encoder's output in every call (a forward hook), so
    the decoder can be compared on its own, fed the reference's context."""
    hook = None
    if context is not None:
        if not hasattr(model, "encoder"):
            raise ParityError(f"{type(model).__name__} has no encoder whose context could be replaced")
        hook = model.encoder.register_forward_hook(
            lambda module, args, out: type(out)(**{**vars(out), "context": context.to(out.context.dtype)})
        )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            carry = model.initial_carry(dict(batch))
            outputs = []
            for _ in range(steps):
                carry, out = model(carry, dict(batch))
                outputs.append({**out, "steps": carry.steps, "halted": carry.halted})
    finally:
        model.train(was_training)
        if hook is not None:
            hook.remove()
    return outputs


@dataclass(frozen=True)
class Mismatch:
    step: int
    key: str
    message: str


def first_mismatch(
    ours: Sequence[Mapping[str, torch.Tensor]],
    reference: Reference,
    *,
    exact: Sequence[Mapping[str, torch.Tensor]] | None = None,
    forward_dtype: str | None = None,
    keys: Sequence[str] = OUTPUT_KEYS,
    steps: int | None = None,
) -> Mismatch | None:
    """The first (step, key), in step order then `keys` order, where `ours` differs from the
    reference beyond `tolerance_for(forward_dtype, key)`; None when every compared tensor
    agrees. Keys absent from the reference are skipped (a TRM has no context); a key the
    reference has and `ours` lacks is a mismatch. `exact` (our float32 replay on the same
    weights) is needed for the bfloat16 recursion outputs. `steps` compares only the first
    so many steps (default: all the reference has)."""
    dtype = forward_dtype or reference.forward_dtype
    wanted = reference.steps[:steps]
    if len(ours) < len(wanted):
        return Mismatch(len(ours) + 1, "", f"{reference.folder}: {len(wanted)} steps compared, ours has {len(ours)}")
    for i, expected in enumerate(wanted):
        for key in keys:
            if key not in expected:
                continue
            where = f"{reference.folder}: step {i + 1} {key}"
            if key not in ours[i]:
                return Mismatch(i + 1, key, f"{where}: missing from our outputs (have {sorted(ours[i])})")
            tol = tolerance_for(dtype, key)
            ref_exact = None if exact is None else exact[i].get(key)
            problem = _difference(ours[i][key], expected[key], tol, ref_exact)
            if problem:
                return Mismatch(i + 1, key, f"{where}: {problem}")
    return None


def _difference(got: torch.Tensor, expected: torch.Tensor, tol: Tolerance, exact: torch.Tensor | None) -> str:
    """'' when `got` agrees with `expected` within `tol`, else what differs and by how much."""
    if got.shape != expected.shape:
        return f"shape {tuple(got.shape)}, reference {tuple(expected.shape)}"
    if not expected.is_floating_point():
        if torch.equal(got.to(expected.dtype), expected):
            return ""
        bad = (got.to(expected.dtype) != expected).nonzero()[0].tolist()
        return f"differs at {tuple(bad)}: ours {got[tuple(bad)].item()}, reference {expected[tuple(bad)].item()}"
    a, b = got.detach().double(), expected.double()
    diff = (a - b).abs()
    worst = tuple(torch.unravel_index(diff.argmax(), diff.shape)) if diff.numel() else ()
    at = (
        (
            f"max |diff| {diff.max().item():.4g} at {tuple(int(j) for j in worst)} "
            f"(ours {a[worst].item():.5g}, reference {b[worst].item():.5g})"
        )
        if diff.numel()
        else "empty"
    )
    if tol.rounding_factor is None:
        outside = diff > tol.atol + tol.rtol * b.abs()
        if not outside.any():
            return ""
        return f"{at}; {int(outside.sum())} of {diff.numel()} values outside rtol {tol.rtol:g}, atol {tol.atol:g}"
    if exact is None:
        raise ParityError("a bfloat16 recursion output is compared against our float32 run: pass `exact`")
    scale = b.norm().clamp_min(torch.finfo(torch.float32).tiny)
    distance = (diff.norm() / scale).item()
    rounding = ((a - exact.double()).norm() / scale).item()
    allowed = max(tol.rounding_factor * rounding, tol.floor)
    if distance <= allowed:
        return ""
    return (
        f"relative RMS distance {distance:.4f} > {allowed:.4f} (= max({tol.rounding_factor:g} x our bfloat16 "
        f"rounding error {rounding:.4f}, {tol.floor:.4g})); {at}"
    )


__all__ = [
    "BFLOAT16_PASS",
    "BFLOAT16_RECURSION",
    "EXACT",
    "FLOAT32",
    "Mismatch",
    "ParityError",
    "Reference",
    "Tolerance",
    "first_mismatch",
    "replay",
    "tolerance_for",
]
