"""Experiment 1: the frozen-decoder run, and the decision between the investigation's
three scenarios from measured numbers.

| scenario | encoder gradients | training loss | eval accuracy |
| A: encoder learns | non-zero, stable | decreasing | improving |
| B: encoder stuck | zero or vanishing | flat | random |
| C: encoder trains but useless | non-zero | decreasing | no improvement |

Thresholds (explicit, so a decision can be argued with):
- gradients are healthy when at least `MIN_GRAD_FRACTION` of the logged steps have a finite
  pre-clip encoder norm above `MIN_GRAD_NORM`;
- the loss is decreasing when the mean `train/lm_loss` of the last `WINDOW` fraction of
  steps is at least `MIN_LOSS_DROP` (relative) below the mean of the first `WINDOW`;
- eval accuracy is improving when the best later `eval/ARC/pass@1` exceeds the first
  evaluation's by at least `MIN_ACCURACY_GAIN` (absolute);
- encoder diversity (`encoder/cross_sample_std` > `MIN_DIVERSITY`) and train exact
  accuracy are reported alongside, as in the investigation's table.
A flat loss is B whatever the norms say; a falling loss is A or C only with healthy norms.
A log with fewer than `MIN_TRAIN_LINES` training lines or fewer than two evaluations cannot
support a decision. Post-clip norms never count (the origin's `grad/encoder_norm`, read
as `grad/encoder_norm_postclip`): clipping rescales the gradient to at most the threshold,
so the investigation's "1.0" said only that the pre-clip norm was at least 1.0. A log
with only those leaves the gradient criterion, and with it every decision but B,
inconclusive, and says why.
"""

from __future__ import annotations

import math
from pathlib import Path
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
PRECLIP, POSTCLIP = "grad/encoder_norm_preclip", "grad/encoder_norm_postclip"

SCENARIOS = {"A": "A: encoder learns", "B": "B: encoder stuck", "C": "C: encoder trains but useless"}


def decide_scenario(metrics: list[dict]) -> CheckResult:
    """The scenario of the investigation's table that a metrics log (records of
    `etrm.metrics_log.read_metrics_log`) supports, with the numbers that decided it."""
    train = [m for m in metrics if "train/lm_loss" in m]
    evals = [m["eval/ARC/pass@1"] for m in metrics if "eval/ARC/pass@1" in m]
    missing = []
    if len(train) < MIN_TRAIN_LINES:
        missing.append(f"{len(train)} training lines (need {MIN_TRAIN_LINES})")
    if len(evals) < 2:
        missing.append(f"{len(evals)} evaluations with eval/ARC/pass@1 (need 2)")
    if missing:
        return CheckResult.inconclusive(
            H,
            "scenario",
            "cannot decide the scenario: the log lacks " + "; ".join(missing),
            {"train_lines": len(train), "evaluations": len(evals)},
        )

    width = max(1, int(len(train) * WINDOW))
    first = fmean(m["train/lm_loss"] for m in train[:width])
    last = fmean(m["train/lm_loss"] for m in train[-width:])
    loss_drop = (first - last) / abs(first) if first else 0.0
    gain = max(evals[1:]) - evals[0]
    diversity = [m["encoder/cross_sample_std"] for m in train if "encoder/cross_sample_std" in m]
    exact = [m["train/exact_accuracy"] for m in train if "train/exact_accuracy" in m]
    loss_ok = loss_drop >= MIN_LOSS_DROP
    improving = gain >= MIN_ACCURACY_GAIN
    grads_ok, grad_text, grad_numbers = _gradient_criterion(train)

    numbers = {
        "train_lines": len(train),
        "evaluations": len(evals),
        **grad_numbers,
        "loss_first_window": first,
        "loss_last_window": last,
        "loss_drop": loss_drop,
        "eval_pass@1_first": evals[0],
        "eval_pass@1_best_later": max(evals[1:]),
        "eval_gain": gain,
        "encoder_cross_sample_std": fmean(diversity[-width:]) if diversity else -1.0,
        "train_exact_accuracy_last": fmean(exact[-width:]) if exact else -1.0,
    }
    others = (
        f"lm_loss {first:.3f} -> {last:.3f} ({loss_drop:+.0%} drop, needs {MIN_LOSS_DROP:.0%}), eval pass@1 "
        f"{evals[0]:.3f} -> best {max(evals[1:]):.3f} (gain needs {MIN_ACCURACY_GAIN:g}), encoder "
        f"cross-sample std {numbers['encoder_cross_sample_std']:.3g}"
    )
    by_accuracy = "A" if improving else "C"
    if grads_ok is None and loss_ok:
        numbers["scenario_if_gradients_flow"] = SCENARIOS[by_accuracy]
        return CheckResult.inconclusive(
            H,
            "scenario",
            f"gradient criterion inconclusive: {grad_text}. The loss and accuracy alone fit "
            f"{SCENARIOS[by_accuracy]} ({others}), but zero pre-clip norms would make it B",
            numbers,
        )
    scenario = by_accuracy if grads_ok and loss_ok else "B"
    numbers["scenario"] = SCENARIOS[scenario]
    if grads_ok is None:  # a flat loss decides B without the norms
        return CheckResult.ok(
            H,
            "scenario",
            f"{SCENARIOS[scenario]}: the loss is flat ({others}); the gradient criterion is inconclusive: {grad_text}",
            numbers,
        )
    return CheckResult.ok(H, "scenario", f"{SCENARIOS[scenario]}: {grad_text}, {others}", numbers)


def _gradient_criterion(train: list[dict]) -> tuple[bool | None, str, dict]:
    """(healthy? None when the log cannot tell, the reason in words, numbers)."""
    pre = [m[PRECLIP] for m in train if PRECLIP in m]
    if pre and len(pre) == len(train):
        healthy = sum(1 for v in pre if math.isfinite(v) and v > MIN_GRAD_NORM) / len(pre)
        return (
            healthy >= MIN_GRAD_FRACTION,
            f"pre-clip encoder norm median {median(pre):.3g} ({healthy:.0%} of steps > {MIN_GRAD_NORM:g})",
            {
                "gradient_criterion": "measured",
                "median_encoder_norm_preclip": median(pre),
                "healthy_grad_fraction": healthy,
            },
        )
    if pre:
        return (
            None,
            (f"pre-clip encoder norms ({PRECLIP}) on only {len(pre)} of {len(train)} training lines"),
            {"gradient_criterion": "partial pre-clip norms", "preclip_lines": len(pre)},
        )
    post = [m[POSTCLIP] for m in train if POSTCLIP in m and math.isfinite(m[POSTCLIP])]
    if not post:
        return None, f"the log has no encoder gradient norms ({PRECLIP})", {"gradient_criterion": "no norms"}
    top = max(post)
    pinned = sum(1 for v in post if top > 0 and abs(v - top) <= 1e-3 * top) / len(post)
    return (
        None,
        (
            f"the log has only post-clip encoder norms ({POSTCLIP}, the origin's grad/encoder_norm), median "
            f"{median(post):.3g}, {pinned:.0%} of steps at {top:.3g}: clipping rescales the gradient to at most its "
            f"threshold, so a norm at the threshold says only that the pre-clip norm was at least that, not that it "
            f"was stable, and a small one may be a healthy encoder share of a large clipped total; "
            f"log {PRECLIP} (etrm's trainer does) to tell B from A or C"
        ),
        {
            "gradient_criterion": "post-clip norms only",
            "median_encoder_norm_postclip": median(post),
            "postclip_fraction_at_max": pinned,
        },
    )


# --- the run -----------------------------------------------------------------------------------


def experiment_model_config(trm_checkpoint, max_demos: int = 4, **overrides):
    """The ETRM config matching a TRM checkpoint's saved decoder settings."""
    from etrm.checkpoints import find_saved_config
    from etrm.config import ConfigError

    saved = find_saved_config(trm_checkpoint)
    if saved is None:
        raise ConfigError(
            f"{trm_checkpoint}: no all_config.yaml or etrm metadata beside it, so the decoder's "
            "recursion settings are unknown; pass a model config"
        )
    base = saved.model_config.to_dict() | dict(
        model_type="etrm", puzzle_emb_ndim=0, num_puzzle_identifiers=1, max_demos=max_demos
    )
    return type(saved.model_config).from_dict(base | overrides)


def experiment_config_for_data(trm_checkpoint, data_dir, **overrides):
    """`experiment_model_config` on a few-shot dataset's canvas (its seq_len) with room for
    its largest demo count. A TRM-layout build, or a seq_len other than the one the
    checkpoint records, is one `DatasetFormatError` naming both."""
    from etrm.checkpoints import CheckpointError, find_saved_config
    from etrm.data.datasets import DatasetFormatError, load_split

    if Path(trm_checkpoint).is_dir():
        raise CheckpointError(f"{trm_checkpoint}: is a directory; give the checkpoint file inside it (step_N)")
    if not Path(trm_checkpoint).is_file():
        raise CheckpointError(f"{trm_checkpoint}: checkpoint not found")
    data_dir = Path(data_dir)
    metas, demos = [], []
    for split in ("train", "test"):
        meta, sets = load_split(data_dir, split)
        for arrays in sets:
            if arrays.num_demos is None:
                raise DatasetFormatError(
                    f"{data_dir / split / f'{arrays.name}__num_demos.npy'}: not found, so {data_dir} is a TRM-layout "
                    f"build; Experiment 1 trains the encoder on few-shot episodes, which need a few-shot build "
                    f"(etrm build-data --mode fewshot, or the origin's build_arc_dataset_encoder.py). The official "
                    f"builder also puts the evaluation tasks' demonstrations in its train split, so training on it "
                    f"would not be few-shot"
                )
            demos.append(int(arrays.num_demos.max(initial=1)))
        metas.append(meta)
    seq_len = metas[0].seq_len
    if metas[1].seq_len != seq_len:
        raise DatasetFormatError(f"{data_dir}: train split seq_len {seq_len}, test split {metas[1].seq_len}")
    recorded, source = _checkpoint_seq_len(find_saved_config(trm_checkpoint))
    if recorded is not None and recorded != seq_len:
        raise DatasetFormatError(
            f"{data_dir / 'train' / 'dataset.json'}: seq_len {seq_len}, but the checkpoint "
            f"{trm_checkpoint} was trained at seq_len {recorded} ({source}); use a dataset built "
            f"on the checkpoint's canvas"
        )
    return experiment_model_config(trm_checkpoint, **{"max_demos": max(demos), "seq_len": seq_len, **overrides})


def _checkpoint_seq_len(saved) -> tuple[int | None, Path | None]:
    """The seq_len a checkpoint's saved config records: ours always does, an official
    all_config.yaml never (the trainer took it from the data), one we wrote in `etrm:`."""
    if saved is None:
        return None, None
    if saved.kind != "all_config.yaml":
        return saved.model_config.seq_len, saved.source
    import yaml

    section = (yaml.safe_load(saved.source.read_text()) or {}).get("etrm") or {}
    return section.get("seq_len"), saved.source


def run_frozen_decoder_experiment(
    trm_checkpoint,
    data_dir,
    metrics_log,
    *,
    steps: int = 150,
    eval_every: int = 30,
    batch_size: int = 8,
    freeze_decoder: bool = True,
    lr: float = 3e-4,
    model_config=None,
    seed: int = 0,
    progress: bool = True,
    device: str = "cpu",
    max_train_groups: int | None = None,
    max_eval_groups: int | None = None,
    model_factory=None,
):
    """The investigation's Experiment 1 at any size, in one process: ETRM with the TRM
    checkpoint's decoder, frozen for the whole run (or not, for comparison), the encoder
    trained with its own optimizer group (lr 3e-4, gradients clipped at 1.0, pre- and
    post-clip norms logged), the test split evaluated before the first step, every
    `eval_every` steps and after the last; metrics go to `metrics_log`, no checkpoints.
    It runs `etrm experiment1`'s own loop (`etrm.experiment1.loop.run_experiment`), so the
    same settings sample the same batches and write the same log. The model is
    `model_factory(config)` (default `etrm.models.build_model`) for `config` (default
    `experiment_config_for_data`). Returns the trainer (its `head` is the trained model)."""
    import torch

    from etrm.experiment1.distributed import Processes
    from etrm.experiment1.loop import run_experiment
    from etrm.experiment1.model import build_etrm
    from etrm.experiment1.settings import RunSettings

    config = model_config or experiment_config_for_data(trm_checkpoint, data_dir)
    settings = RunSettings(
        steps=steps,
        global_batch_size=batch_size,
        eval_every=eval_every,
        lr=lr,
        seed=seed,
        max_train_groups=max_train_groups,
        max_eval_groups=max_eval_groups,
    )
    return run_experiment(
        lambda: build_etrm(trm_checkpoint, config, model_factory),
        data_dir,
        None,
        settings,
        processes=Processes(0, 1, torch.device(device)),
        metrics_log=Path(metrics_log),
        frozen=freeze_decoder,
        progress=progress,
    )
