"""Experiment 1: the frozen-decoder run, and the decision between the investigation's
three scenarios from measured numbers.

| scenario | encoder gradients | training loss | eval accuracy |
| A: encoder learns | non-zero, stable | decreasing | improving |
| B: encoder stuck | zero or vanishing | flat | random |
| C: encoder trains but useless | non-zero | decreasing | no improvement |

Thresholds (explicit, so a decision can be argued with):
- gradients are healthy when at least `MIN_GRAD_FRACTION` of the logged steps have a finite
  pre-clip encoder norm above `MIN_GRAD_NORM` (post-clip norms are never used: clipping
  pins them to the threshold);
- the loss is decreasing when the mean `train/lm_loss` of the last `WINDOW` fraction of
  steps is at least `MIN_LOSS_DROP` (relative) below the mean of the first `WINDOW`;
- eval accuracy is improving when the best later `eval/ARC/pass@1` exceeds the first
  evaluation's by at least `MIN_ACCURACY_GAIN` (absolute);
- encoder diversity (`encoder/cross_sample_std` > `MIN_DIVERSITY`) and train exact
  accuracy are reported alongside, as in the investigation's table.
A log with fewer than `MIN_TRAIN_LINES` training lines, without pre-clip norms, or
with fewer than two evaluations cannot support a decision: the result is inconclusive.
"""
from __future__ import annotations

import math
from statistics import fmean, median

from etrm.checks.result import CheckResult

H = "experiment1"
MIN_GRAD_NORM = 1e-6
MIN_GRAD_FRACTION = 0.9
WINDOW = 0.2
MIN_LOSS_DROP = 0.05
MIN_ACCURACY_GAIN = 0.01
MIN_DIVERSITY = 1e-3
MIN_TRAIN_LINES = 10

SCENARIOS = {"A": "A: encoder learns", "B": "B: encoder stuck", "C": "C: encoder trains but useless"}


def decide_scenario(metrics: list[dict]) -> CheckResult:
    """The scenario of the investigation's table that a metrics log (JSON lines of our
    training step) supports, with the numbers that decided it."""
    train = [m for m in metrics if "train/lm_loss" in m]
    evals = [m["eval/ARC/pass@1"] for m in metrics if "eval/ARC/pass@1" in m]
    norms = [m["grad/encoder_norm_preclip"] for m in train if "grad/encoder_norm_preclip" in m]
    missing = []
    if len(train) < MIN_TRAIN_LINES:
        missing.append(f"{len(train)} training lines (need {MIN_TRAIN_LINES})")
    if len(norms) < len(train) or not norms:
        missing.append("pre-clip encoder gradient norms (grad/encoder_norm_preclip) on every step")
    if len(evals) < 2:
        missing.append(f"{len(evals)} evaluations with eval/ARC/pass@1 (need 2)")
    if missing:
        return CheckResult.inconclusive(H, "scenario", "cannot decide the scenario: the log lacks " + "; ".join(missing),
                                        {"train_lines": len(train), "evaluations": len(evals)})

    healthy = sum(1 for v in norms if math.isfinite(v) and v > MIN_GRAD_NORM) / len(norms)
    width = max(1, int(len(train) * WINDOW))
    first = fmean(m["train/lm_loss"] for m in train[:width])
    last = fmean(m["train/lm_loss"] for m in train[-width:])
    loss_drop = (first - last) / abs(first) if first else 0.0
    gain = max(evals[1:]) - evals[0]
    diversity = [m["encoder/cross_sample_std"] for m in train if "encoder/cross_sample_std" in m]
    exact = [m["train/exact_accuracy"] for m in train if "train/exact_accuracy" in m]

    grads_ok = healthy >= MIN_GRAD_FRACTION
    loss_ok = loss_drop >= MIN_LOSS_DROP
    improving = gain >= MIN_ACCURACY_GAIN
    scenario = "B" if not (grads_ok and loss_ok) else ("A" if improving else "C")
    numbers = {
        "scenario": SCENARIOS[scenario], "train_lines": len(train), "evaluations": len(evals),
        "median_encoder_norm_preclip": median(norms), "healthy_grad_fraction": healthy,
        "loss_first_window": first, "loss_last_window": last, "loss_drop": loss_drop,
        "eval_pass@1_first": evals[0], "eval_pass@1_best_later": max(evals[1:]), "eval_gain": gain,
        "encoder_cross_sample_std": fmean(diversity[-width:]) if diversity else -1.0,
        "train_exact_accuracy_last": fmean(exact[-width:]) if exact else -1.0,
    }
    message = (f"{SCENARIOS[scenario]}: pre-clip encoder norm median {median(norms):.3g} "
               f"({healthy:.0%} of steps > {MIN_GRAD_NORM:g}), lm_loss {first:.3f} -> {last:.3f} "
               f"({loss_drop:+.0%} drop, needs {MIN_LOSS_DROP:.0%}), eval pass@1 {evals[0]:.3f} -> best "
               f"{max(evals[1:]):.3f} (gain needs {MIN_ACCURACY_GAIN:g}), encoder cross-sample std "
               f"{numbers['encoder_cross_sample_std']:.3g}")
    return CheckResult.ok(H, "scenario", message, numbers)


# --- the run -----------------------------------------------------------------------------------

def experiment_model_config(trm_checkpoint, max_demos: int = 4, **overrides):
    """The ETRM config matching a TRM checkpoint's saved decoder settings."""
    from etrm.checkpoints import find_saved_config

    saved = find_saved_config(trm_checkpoint)
    if saved is None:
        raise ValueError(f"{trm_checkpoint}: no all_config.yaml or etrm metadata beside it, so the decoder's "
                         "recursion settings are unknown; pass a model config")
    base = saved.model_config.to_dict() | dict(model_type="etrm", puzzle_emb_ndim=0, num_puzzle_identifiers=1,
                                                max_demos=max_demos)
    return type(saved.model_config).from_dict(base | overrides)


def run_frozen_decoder_experiment(trm_checkpoint, data_dir, metrics_log, *, steps: int = 150, eval_every: int = 30,
                                  batch_size: int = 8, freeze_decoder: bool = True, lr: float = 3e-4,
                                  model_config=None, seed: int = 0, progress: bool = True):
    """The investigation's Experiment 1 at any size: ETRM with the TRM checkpoint's decoder,
    frozen for the whole run (or not, for comparison), the encoder trained with its own
    optimizer group, evaluated every `eval_every` steps; metrics go to `metrics_log`.
    Returns the trainer (its `head` is the trained model)."""
    import torch

    from etrm.checkpoints import load_pretrained_decoder
    from etrm.data.datasets import FewShotPuzzleDataset
    from etrm.evaluation import ArcEvaluator
    from etrm.models import build_model
    from etrm.training import MetricsLog, TrainingConfig, train

    config = model_config or experiment_model_config(trm_checkpoint)
    torch.manual_seed(seed)
    head = build_model(config)
    report = load_pretrained_decoder(head, trm_checkpoint)
    log = MetricsLog(metrics_log)
    log.write(decoder_load_record(report))  # investigation Test 1.1: the log says what was loaded
    train_set = FewShotPuzzleDataset(data_dir, "train", batch_size, max_demos=config.max_demos, seed=seed, epochs=10**6)
    eval_set = FewShotPuzzleDataset(data_dir, "test", batch_size, max_demos=config.max_demos, test_mode=True)
    recipe = TrainingConfig(lr=lr, encoder_lr_scale=1.0, warmup_steps=min(10, steps), global_batch_size=batch_size,
                            freeze_decoder_steps=steps + 1 if freeze_decoder else 0, grad_clip_norm=1.0,
                            total_steps=steps, seed=seed)
    with log:
        return train(head, train_set, recipe, steps=steps, metrics_log=log, eval_every=eval_every,
                     eval_dataset=eval_set, evaluator=ArcEvaluator.from_data_dir(data_dir), progress=progress)


def decoder_load_record(report) -> dict:
    """A step-0 metrics-log record of a `DecoderLoadReport`, for the H1 log check."""
    import hashlib

    digest = hashlib.sha256()
    with open(report.path, "rb") as f:  # identifies the checkpoint wherever it is moved
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return {"step": 0, "pretrained_decoder/checkpoint": report.path.name,
            "pretrained_decoder/sha256": digest.hexdigest(),
            "pretrained_decoder/params_loaded": len(report.loaded_params),
            "pretrained_decoder/params_missing": len(report.missing_params),
            "pretrained_decoder/buffers_loaded": len(report.loaded_buffers),
            "pretrained_decoder/config": report.config_status}
