"""Hypothesis 3: is the encoder output well formed?

The decoder was trained with the puzzle-embedding prefix; the encoder's context takes
its place, so it must have the prefix's shape and dtype, be finite (also for a sample
without any valid demo), sit on a comparable scale, and depend only on the set of
valid demos (not their order, not what fills padded slots).
"""

from __future__ import annotations

import torch

from etrm.checks.probes import context_of, with_demos
from etrm.checks.result import CheckResult
from etrm.interface import TRMInterface, as_interface

H = "hypothesis3"
# The context may differ from the prefix the decoder was trained with by this factor in
# RMS before we call the scale wrong: beyond it the decoder's input statistics change a lot.
SCALE_TOLERANCE = 4.0


# `context`, in the checks below: `first_context(batch)` when the caller has computed it.


def check_context_shape_and_dtype(
    model: TRMInterface, batch: dict[str, torch.Tensor], context: torch.Tensor | None = None
) -> CheckResult:
    model = as_interface(model)
    if why := model.missing("encoder", "context_shape"):
        return CheckResult.inconclusive(H, "context_shape_dtype", why)
    ctx = context_of(model, batch, context)
    expected = (batch["inputs"].shape[0], model.puzzle_emb_len, model.hidden_size)
    ok = tuple(ctx.shape) == expected and ctx.dtype == getattr(torch, model.forward_dtype)
    return CheckResult.from_condition(
        H,
        "context_shape_dtype",
        ok,
        f"context {tuple(ctx.shape)} {str(ctx.dtype).removeprefix('torch.')}, decoder prefix expects "
        f"{expected} {model.forward_dtype}",
        {"tokens": ctx.shape[1], "width": ctx.shape[-1]},
    )


def check_context_finite(model: TRMInterface, batch: dict[str, torch.Tensor]) -> CheckResult:
    """Finite for every sample, including one whose demo slots are all padding."""
    model = as_interface(model)
    if why := model.missing("encoder"):
        return CheckResult.inconclusive(H, "context_finite", why)
    mask = batch["demo_mask"].clone()
    mask[0] = False  # the origin encoder returned NaN here
    ctx = model.first_context(with_demos(batch, batch["demo_inputs"], batch["demo_labels"], mask)).float()
    bad = (~torch.isfinite(ctx)).flatten(1).any(1)
    return CheckResult.from_condition(
        H,
        "context_finite",
        not bad.any(),
        f"{int(bad.sum())} of {len(bad)} samples have NaN/Inf in the context (sample 0 has no valid demo)",
        {"nonfinite_samples": int(bad.sum()), "samples": len(bad)},
    )


def prefix_rms(puzzle_emb_weights: torch.Tensor, hidden_size: int, ids: torch.Tensor | None = None) -> float:
    """RMS of the non-zero prefix tokens of trained puzzle embeddings (blank row 0 excluded)."""
    rows = puzzle_emb_weights[ids] if ids is not None else puzzle_emb_weights[1:]
    tokens = rows.float().reshape(rows.shape[0], -1, hidden_size)
    rms = tokens.square().mean(-1).sqrt()
    used = rms[rms > 0]
    return float(used.mean()) if used.numel() else 0.0


def check_context_scale(
    model: TRMInterface,
    batch: dict[str, torch.Tensor],
    reference_rms: float | None,
    context: torch.Tensor | None = None,
) -> CheckResult:
    """Per-token RMS of the context vs the RMS of the puzzle-embedding prefix the decoder
    was trained with (from the TRM checkpoint). Without a reference: inconclusive."""
    model = as_interface(model)
    if why := model.missing("encoder"):
        return CheckResult.inconclusive(H, "context_scale", why)
    ctx = context_of(model, batch, context).float()
    rms = float(ctx.square().mean(-1).sqrt().mean())
    if reference_rms is None or reference_rms <= 0:
        return CheckResult.inconclusive(
            H,
            "context_scale",
            f"context token RMS {rms:.3g}; no trained puzzle embedding to compare with (give a TRM checkpoint)",
            {"context_rms": rms},
        )
    ratio = rms / reference_rms
    return CheckResult.from_condition(
        H,
        "context_scale",
        1 / SCALE_TOLERANCE <= ratio <= SCALE_TOLERANCE,
        f"context token RMS {rms:.3g} vs trained puzzle-embedding RMS {reference_rms:.3g}: ratio {ratio:.2f} "
        f"(allowed {1 / SCALE_TOLERANCE:.2f}-{SCALE_TOLERANCE:.0f})",
        {"context_rms": rms, "prefix_rms": reference_rms, "ratio": ratio},
    )


def _encode(model: TRMInterface, batch, inputs, labels, mask) -> torch.Tensor:
    return model.first_context(with_demos(batch, inputs, labels, mask)).float()


# Shuffled demos are summed in another order. In float32 that moves a context by rounding far
# below `atol`; in bfloat16 it moves some elements by one or two bfloat16 steps (measured at the
# official width on an AVX2 CPU: max 3.1e-2 on values up to 3.1, 3.2e-3-3.8e-3 relative RMS,
# i.e. half a bfloat16 epsilon). A narrower context is therefore judged norm-wise, against 2
# epsilons of its dtype: 4x that rounding, and far below what a slot-dependent encoder does
# (tests/foreign_repo's demo-slot positions: an O(1) change).
ORDER_EPSILONS = 2


def demo_permutations(slots: int, trials: int, seed: int = 0) -> list[torch.Tensor]:
    """`trials` permutations of the demo slots: the slots reversed, then rotated by one, then
    seeded random ones. Each of the first two moves every sample's valid demos to other slots
    (reversal keeps only an odd slot count's middle one) and changes their order whenever a
    sample has two or more, so a slot- or order-dependent encoder is caught on every sample
    and not by the luck of a draw; the random ones look for anything else."""
    designed = [torch.arange(slots - 1, -1, -1), torch.arange(1, slots + 1) % slots]
    gen = torch.Generator().manual_seed(seed)
    extra = [torch.randperm(slots, generator=gen) for _ in range(max(0, trials - len(designed)))]
    return (designed + extra)[:trials]


def check_demo_order_invariance(
    model: TRMInterface,
    batch: dict[str, torch.Tensor],
    trials: int = 3,
    seed: int = 0,
    atol: float = 1e-4,
    context: torch.Tensor | None = None,
) -> CheckResult:
    """Permuting the demo slots (valid and padded together; `demo_permutations`) leaves the
    context unchanged (within `atol`, or for a bfloat16/float16 context within its rounding:
    ORDER_EPSILONS above), over `trials` permutations; reports the worst one."""
    model = as_interface(model)
    if why := model.missing("encoder"):
        return CheckResult.inconclusive(H, "demo_order_invariance", why)
    d = batch["demo_mask"].shape[1]
    context = context_of(model, batch, context)
    rtol = ORDER_EPSILONS * torch.finfo(context.dtype).eps if context.dtype in (torch.bfloat16, torch.float16) else 0.0
    base = context.float()
    worst, worst_relative, worst_perm = 0.0, 0.0, list(range(d))
    for perm in demo_permutations(d, trials, seed):
        perm = perm.to(batch["demo_mask"].device)
        other = _encode(
            model, batch, batch["demo_inputs"][:, perm], batch["demo_labels"][:, perm], batch["demo_mask"][:, perm]
        )
        diff = float((base - other).abs().max())
        relative = float((base - other).norm() / base.norm().clamp_min(1e-30))
        if diff >= worst:
            worst, worst_perm = diff, perm.tolist()
        worst_relative = max(worst_relative, relative)
    tolerance = f"tolerance {atol:g}" + (
        f", or {rtol:.1e} relative RMS for a {str(context.dtype).removeprefix('torch.')} context" if rtol else ""
    )
    return CheckResult.from_condition(
        H,
        "demo_order_invariance",
        worst <= atol or worst_relative <= rtol,
        f"largest context change over {trials} demo permutations: {worst:.2e}, relative RMS "
        f"{worst_relative:.1e} ({tolerance}; worst permutation {worst_perm})",
        {"max_abs_diff": worst, "max_relative_rms": worst_relative, "trials": trials},
    )


def check_padding_invariance(
    model: TRMInterface,
    batch: dict[str, torch.Tensor],
    trials: int = 3,
    seed: int = 0,
    context: torch.Tensor | None = None,
) -> CheckResult:
    """Random tokens written into padded demo slots leave the context bit-identical."""
    model = as_interface(model)
    if why := model.missing("encoder"):
        return CheckResult.inconclusive(H, "padding_invariance", why)
    gen = torch.Generator().manual_seed(seed)
    pad = ~batch["demo_mask"].bool()
    base = context_of(model, batch, context).float()
    worst = 0.0
    for _ in range(trials):
        noise_in = torch.randint(0, 12, batch["demo_inputs"].shape, generator=gen).to(batch["demo_inputs"])
        noise_out = torch.randint(0, 12, batch["demo_labels"].shape, generator=gen).to(batch["demo_labels"])
        other = _encode(
            model,
            batch,
            torch.where(pad[..., None], noise_in, batch["demo_inputs"]),
            torch.where(pad[..., None], noise_out, batch["demo_labels"]),
            batch["demo_mask"],
        )
        worst = max(worst, float((base - other).abs().max()))
    padded = int(pad.sum())
    if not padded:  # nothing was tested: no verdict either way
        return CheckResult.inconclusive(
            H,
            "padding_invariance",
            "the batch has no padded demo slot to test: use a batch whose tasks have fewer demos than slots",
            {"padded_slots": 0},
        )
    return CheckResult.from_condition(
        H,
        "padding_invariance",
        worst == 0.0,
        f"{padded} padded demo slots filled with random tokens {trials} times; largest context change {worst:.2e}",
        {"padded_slots": padded, "max_abs_diff": worst},
    )
