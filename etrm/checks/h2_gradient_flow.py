"""Hypothesis 2: do encoder gradients flow?

Evidence comes from per-parameter gradients and pre-clip norms, never from a clipped
total: the investigation's "grad/encoder_norm = 1.0" was the clip threshold.
"""

from __future__ import annotations

import math

import torch

from etrm.checks.probes import act_step_losses, episode_loss
from etrm.checks.result import CheckResult
from etrm.interface import TRMInterface, as_interface

H = "hypothesis2"


def check_encoder_requires_grad(model: TRMInterface) -> CheckResult:
    """Every encoder parameter is trainable (not frozen by accident)."""
    model = as_interface(model)
    if why := model.missing("encoder"):
        return CheckResult.inconclusive(H, "encoder_requires_grad", why)
    params = model.encoder_parameters()
    frozen = [n for n, p in params if not p.requires_grad]
    return CheckResult.from_condition(
        H,
        "encoder_requires_grad",
        not frozen,
        f"{len(params) - len(frozen)} of {len(params)} encoder parameters require grad"
        + (f"; frozen: {', '.join(frozen[:5])}{' ...' if len(frozen) > 5 else ''}" if frozen else ""),
        {"encoder_params": len(params), "frozen": len(frozen)},
    )


def check_encoder_gradient_every_step(
    model: TRMInterface, batch: dict[str, torch.Tensor], steps: int = 3
) -> CheckResult:
    """Each ACT step's loss gives every encoder parameter a non-zero, finite gradient,
    including steps on which no sample was reset (where a carried or cached context
    would starve the encoder). A missing or zero gradient and a non-finite one have
    different causes, so they are counted and reported apart."""
    model = as_interface(model)
    if why := model.missing("encoder"):
        return CheckResult.inconclusive(H, "encoder_gradient_every_step", why)
    steps = min(steps, model.halt_max_steps)
    named = [(n, p) for n, p in model.encoder_parameters() if p.requires_grad]
    starved: dict[int, list[str]] = {}
    nonfinite: dict[int, list[str]] = {}
    min_norm = math.inf
    for step, loss in enumerate(act_step_losses(model, batch, steps), start=1):
        # The graph is kept: a model whose steps share one (an undetached carry) must not crash the check.
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True) if named else []
        for (n, _), g in zip(named, grads):
            if g is not None and not torch.isfinite(g).all():
                nonfinite.setdefault(step, []).append(n)
            elif g is None or not g.abs().sum() > 0:
                starved.setdefault(step, []).append(n)
        norms = [g.norm().item() for g in grads if g is not None and torch.isfinite(g).all()]
        min_norm = min([min_norm, *norms]) if norms else 0.0
    if not named:
        return CheckResult.fail(
            H, "encoder_gradient_every_step", "the encoder has no trainable parameters", {"steps": steps}
        )
    problems = []
    if starved:
        problems.append(
            _bad_steps("no gradient", starved, len(named)) + ": look for .detach() or no_grad on the encoder path"
        )
    if nonfinite:
        problems.append(
            _bad_steps("a non-finite (NaN/inf) gradient", nonfinite, len(named))
            + ": the path is connected but its numerics are not; look for a division by zero, log(0) "
            "or an overflow in the loss or the encoder (e.g. stablemax without its epsilon at a "
            "bfloat16 logit of exactly 1)"
        )
    message = "; ".join(problems) or (
        f"all {len(named)} encoder parameters got a non-zero, finite gradient on each of {steps} ACT steps "
        f"(steps 2+ had no resets); smallest per-parameter norm {min_norm:.3g}"
    )
    ok = not starved and not nonfinite
    return CheckResult.from_condition(
        H,
        "encoder_gradient_every_step",
        ok,
        message,
        {
            "steps": steps,
            "params": len(named),
            "starved_steps": len(starved),
            "nonfinite_steps": len(nonfinite),
            "min_param_grad_norm": min_norm if ok else 0.0,
        },
    )


def _bad_steps(what: str, by_step: dict[int, list[str]], total: int) -> str:
    first = by_step[min(by_step)]
    return (
        f"{what} on step(s) {sorted(by_step)} for {len(first)} of {total} encoder parameters, "
        f"e.g. {', '.join(first[:4])}"
    )


def check_loss_responds_to_encoder(
    model: TRMInterface, batch: dict[str, torch.Tensor], scale: float = 0.05, seed: int = 0, steps: int | None = None
) -> CheckResult:
    """Perturbing the encoder's weights changes the loss of the first `steps` evaluation ACT
    steps (default: a whole episode): the decoder reads the context."""
    model = as_interface(model)
    if why := model.missing("encoder"):
        return CheckResult.inconclusive(H, "loss_responds_to_encoder", why)
    params = [p for _, p in model.encoder_parameters()]
    gen = torch.Generator().manual_seed(seed)
    before = episode_loss(model, batch, steps)
    saved = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p in params:
                rms = p.float().square().mean().sqrt().item() or 1.0
                p.add_(torch.randn(p.shape, generator=gen).to(p) * scale * rms)
        after = episode_loss(model, batch, steps)
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
    change = abs(after - before) / max(abs(before), 1e-12)
    return CheckResult.from_condition(
        H,
        "loss_responds_to_encoder",
        change > 1e-6,
        f"perturbing encoder weights by {scale:.0%} of their RMS changed the loss by {change:.2e} (relative)",
        {"loss_before": before, "loss_after": after, "relative_change": change},
    )


def check_training_steps_finite(model: TRMInterface, batch: dict[str, torch.Tensor], steps: int = 2) -> CheckResult:
    """The loss of each of the first `steps` training ACT steps, and the gradient it gives every
    trainable parameter (decoder and encoder), are finite at the model's own forward_dtype. A
    bfloat16 overflow or a log(0) shows here before any training run does; needs no encoder."""
    model = as_interface(model)
    steps = min(steps, model.halt_max_steps)
    named = [(n, p) for n, p in model.head.named_parameters() if p.requires_grad]
    bad_loss: list[int] = []
    bad_grad: dict[int, list[str]] = {}
    for step, loss in enumerate(act_step_losses(model, batch, steps), start=1):
        if not torch.isfinite(loss).all():
            bad_loss.append(step)
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True, retain_graph=True) if named else []
        for (n, _), g in zip(named, grads):
            if g is not None and not torch.isfinite(g).all():
                bad_grad.setdefault(step, []).append(n)
    dtype = model.forward_dtype or "the model's dtype"
    problems = ([f"a non-finite loss on step(s) {bad_loss}"] if bad_loss else []) + (
        [_bad_steps("a non-finite gradient", bad_grad, len(named))] if bad_grad else []
    )
    message = (
        f"{'; '.join(problems)} at {dtype}: look for an overflow, a division by zero or log(0) in the loss or the model"
        if problems
        else f"loss and the gradients of all {len(named)} trainable parameters finite on each of {steps} training "
        f"ACT steps at {dtype}"
    )
    return CheckResult.from_condition(
        H,
        "training_steps_finite",
        not problems,
        message,
        {
            "steps": steps,
            "params": len(named),
            "nonfinite_loss_steps": len(bad_loss),
            "nonfinite_grad_steps": len(bad_grad),
            "forward_dtype": str(dtype),
        },
    )


def check_preclip_norms_logged(metrics: list[dict]) -> CheckResult:
    """A training log shows a healthy encoder gradient only if it logged norms before
    clipping: post-clip norms sit at the clip threshold whenever clipping is active."""
    name = "encoder_norm_preclip_in_log"
    pre = [m["grad/encoder_norm_preclip"] for m in metrics if "grad/encoder_norm_preclip" in m]
    if not pre:
        # The origin's name, or etrm's for it once a W&B history is read (etrm.metrics_log).
        legacy = any("grad/encoder_norm" in m or "grad/encoder_norm_postclip" in m for m in metrics)
        return CheckResult.inconclusive(
            H,
            name,
            "the metrics log has no grad/encoder_norm_preclip"
            + (
                " (only grad/encoder_norm, which the origin logged after clipping: a value of 1.0 is the clip threshold)"
                if legacy
                else ""
            ),
            {"lines": len(metrics)},
        )
    bad = [v for v in pre if not math.isfinite(v) or v <= 0]
    post = [m.get("grad/encoder_norm_postclip") for m in metrics if "grad/encoder_norm_postclip" in m]
    clipped = sum(1 for a, b in zip(pre, post) if b is not None and b < a * (1 - 1e-6))
    median = sorted(pre)[len(pre) // 2]
    return CheckResult.from_condition(
        H,
        name,
        not bad,
        f"pre-clip encoder gradient norm logged on {len(pre)} steps, median {median:.3g}, "
        f"{len(bad)} zero or non-finite; clipping was active on {clipped} steps",
        {"steps": len(pre), "median_preclip": median, "zero_or_nonfinite": len(bad), "clipped_steps": clipped},
    )
