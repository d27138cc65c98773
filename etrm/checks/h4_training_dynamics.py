"""Hypothesis 4: are the training dynamics sane (learning rates, batch, halting)?

The audit separates settings that must equal the pretrained decoder's (a decoder trained
with L_cycles 4 run with 6 computes something else: the origin's composed config did
that) from deliberate departures from the official recipe (learning rate, batch size,
exploration, clipping), which are listed, not failed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from etrm.checks.result import CheckResult
from etrm.config.importer import DECODER_SETTINGS  # the settings an ETRM must share with its TRM

H = "hypothesis4"
# The official ARC-AGI-1 recipe under the trainer's all_config.yaml names (informational:
# departures are listed, not failed). grad_clip_norm 0 or None means no clipping.
OFFICIAL_RECIPE = {
    "lr": 1e-4,
    "weight_decay": 0.1,
    "beta1": 0.9,
    "beta2": 0.95,
    "lr_warmup_steps": 2000,
    "global_batch_size": 768,
    "ema": True,
    "ema_rate": 0.999,
    "grad_clip_norm": None,
    "encoder_lr_scale": 1.0,
    "encoder_weight_decay_scale": 1.0,
    "lr_min_ratio": 1.0,
}


def check_config_audit(etrm_config, etrm_training: Mapping[str, Any], trm_config=None) -> CheckResult:
    """Decoder settings vs the pretrained TRM's (fail on any difference), recipe vs the official run (listed)."""
    from etrm.config import official_arc1_config

    recipe = {
        k: (etrm_training.get(k), v)
        for k, v in OFFICIAL_RECIPE.items()
        if k in etrm_training and _norm(k, etrm_training.get(k)) != _norm(k, v)
    }
    exploration = (etrm_config.halt_exploration_prob, official_arc1_config().halt_exploration_prob)
    if exploration[0] != exploration[1]:
        recipe["halt_exploration_prob"] = exploration
    listed = "; ".join(f"{k} {mine} (official {theirs})" for k, (mine, theirs) in recipe.items()) or "none"
    if trm_config is None:
        return CheckResult.inconclusive(
            H,
            "config_audit",
            "the pretrained TRM's config is unknown, so the decoder "
            f"settings cannot be audited; recipe departures: {listed}",
            {"recipe_departures": len(recipe)},
        )
    mismatched = {
        k: (getattr(etrm_config, k), getattr(trm_config, k))
        for k in DECODER_SETTINGS
        if getattr(etrm_config, k) != getattr(trm_config, k)
    }
    head = (
        "decoder settings equal the pretrained TRM's"
        if not mismatched
        else "decoder settings differ from the pretrained TRM's: "
        + "; ".join(f"{k} {a} vs TRM {b}" for k, (a, b) in mismatched.items())
    )
    return CheckResult.from_condition(
        H,
        "config_audit",
        not mismatched,
        f"{head}; recipe departures: {listed}",
        {"decoder_mismatches": len(mismatched), "recipe_departures": len(recipe)},
    )


def _norm(key: str, value):
    return None if key == "grad_clip_norm" and not value else value  # a clip norm of 0 is "off", like None


def check_effective_learning_rates(trainer) -> CheckResult:
    """After warmup, each optimizer group's lr and weight decay are the configured ones:
    decoder lr/wd, encoder lr * encoder_lr_scale and wd * encoder_weight_decay_scale."""
    from etrm.checkpoints import act_key

    cfg = trainer.config
    expected = {"decoder": (cfg.lr, cfg.weight_decay), "encoder": (cfg.encoder_lr, cfg.encoder_weight_decay)}
    step = cfg.warmup_steps + 1
    lrs = trainer.learning_rates(step)
    seen, wrong = {}, []
    for opt in trainer.optimizers:
        for group in opt.param_groups:
            part = group.get("part")
            if part not in expected:
                continue
            names = {id(p) for p in group["params"]}
            # By component (inner / encoder), whatever compile or DDP wrapped the head in.
            members = {act_key(n).split(".", 1)[0] for n, p in trainer.head.named_parameters() if id(p) in names}
            actual = (lrs.get(part, group["lr"]), group["weight_decay"])
            seen[part] = actual
            if abs(actual[0] - expected[part][0]) > 1e-12 or abs(actual[1] - expected[part][1]) > 1e-12:
                wrong.append(
                    f"{part}: lr {actual[0]:g} wd {actual[1]:g}, configured {expected[part][0]:g} / {expected[part][1]:g}"
                )
            if members != {"inner" if part == "decoder" else "encoder"}:
                wrong.append(f"{part} group holds parameters of {sorted(members)}")
    missing = [p for p in expected if p not in seen and (p == "decoder" or trainer.has_encoder)]
    wrong += [f"no optimizer group for the {p}" for p in missing]
    return CheckResult.from_condition(
        H,
        "effective_learning_rates",
        not wrong,
        "; ".join(wrong)
        if wrong
        else "after warmup: " + ", ".join(f"{p} lr {v[0]:g} wd {v[1]:g}" for p, v in seen.items()),
        {f"{p}_lr": v[0] for p, v in seen.items()} | {f"{p}_wd": v[1] for p, v in seen.items()},
    )


def check_halting_rate(
    model, batch: dict, samples: int = 256, seed: int = 0, tolerance: float | None = None
) -> CheckResult:
    """With every sample wanting to halt (Q biased), the share halting at step 1 in training
    is 1 - halt_exploration_prob: the exploration veto works at the configured rate. The
    default tolerance is half the exploration rate, at most 0.1 (at least 0.02), so a model
    that never explores (100% halt) fails at the official 0.1 too; 256 samples put the
    binomial noise at 2.6 sigma of it there, and the draw is seeded."""
    from etrm.interface import as_interface

    model = as_interface(model)
    if why := model.missing("etrm"):  # biasing the Q head needs etrm's decoder
        return CheckResult.inconclusive(H, "halting_rate", why)
    p = model.halt_exploration_prob
    if tolerance is None:
        tolerance = min(0.1, max(0.02, p / 2))
    if model.halt_max_steps < 2:
        return CheckResult.inconclusive(H, "halting_rate", "halt_max_steps 1: nothing to explore")
    # The biased Q head makes every sample want to halt whatever it sees, so one demo each
    # suffices: the encoder's pass over 256 x 4 demos was half the check's time.
    rows = torch.arange(samples) % len(batch["inputs"])
    big = {k: v[rows][:, :1] if k.startswith("demo_") else v[rows] for k, v in batch.items()}
    q_head = model.etrm_model.inner.q_head
    saved_bias = q_head.bias.detach().clone()
    try:
        with torch.no_grad(), torch.random.fork_rng(), model.mode(training=True):
            torch.manual_seed(seed)
            q_head.bias.fill_(20.0)
            observed = float(model.step(model.initial_carry(big), big).carry.halted.float().mean())
    finally:
        with torch.no_grad():
            q_head.bias.copy_(saved_bias)
    expected = 1 - p
    return CheckResult.from_condition(
        H,
        "halting_rate",
        abs(observed - expected) <= tolerance,
        f"{observed:.0%} of {samples} samples that want to halt did so at step 1; exploration "
        f"{p:g} should let {expected:.0%} (tolerance {tolerance:.0%})",
        {"observed": observed, "expected": expected, "exploration": p},
    )


def check_tiny_overfit(
    head: nn.Module, batch: dict, config=None, steps: int = 20, min_drop: float = 0.3
) -> CheckResult:
    """Trained on one batch, the model's loss must fall by `min_drop` (relative) in `steps`
    steps: the optimizer, schedule and loss scaling can move the model at all. (The tiny
    models drop 38-39% in 20 steps and 42% in 40; a dead optimizer drops 0%.)"""
    from etrm.training import Trainer, TrainingConfig

    config = config or TrainingConfig(
        lr=1e-3, warmup_steps=0, global_batch_size=len(batch["inputs"]), total_steps=steps
    )
    trainer = Trainer(head, config)
    losses = [trainer.step(batch)["train/lm_loss"] for _ in range(steps)]
    window = max(1, steps // 5)
    first, last = sum(losses[:window]) / window, sum(losses[-window:]) / window
    drop = (first - last) / first if first else 0.0
    return CheckResult.from_condition(
        H,
        "tiny_overfit",
        drop >= min_drop,
        f"lm_loss on one repeated batch: {first:.3f} -> {last:.3f} over {steps} steps ({drop:.0%} drop, needs "
        f"{min_drop:.0%})",
        {"first": first, "last": last, "drop": drop, "steps": steps},
    )
