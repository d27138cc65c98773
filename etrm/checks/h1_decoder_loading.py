"""Hypothesis 1: does the pretrained TRM decoder load correctly into ETRM?

Lessons from the investigation built in: weight-match counts report parameters and the
never-trained buffers (H_init, L_init) apart; EMA provenance comes from saved metadata or
config, never from weight statistics; an unverifiable recursion setting (L_cycles 4 vs 6
changes no tensor shape) is inconclusive, not fine; a decoder that drifted is only
evidence when the run was supposed to keep it frozen.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from etrm.checks.result import CheckResult

H = "hypothesis1"
# Official wrapper prefixes in every combination the official and origin trainers produce.
KEY_LAYOUTS = {"plain": "", "compiled": "_orig_mod.", "ddp": "module.", "ddp+compiled": "module._orig_mod."}


def relayout_checkpoint(src: Path, dst: Path, prefix: str) -> Path:
    """A copy of a checkpoint whose keys carry `prefix` in front of the loss-head level
    (and its saved config beside it), to exercise every key layout."""
    import shutil

    from etrm.checkpoints import normalize_key, read_state_dict
    from etrm.config.importer import CONFIG_FILE

    dst.parent.mkdir(parents=True, exist_ok=True)
    state = {prefix + normalize_key(k): v for k, v in read_state_dict(src).items()}
    torch.save(state, dst)
    if (src.parent / CONFIG_FILE).is_file():
        shutil.copy(src.parent / CONFIG_FILE, dst.parent / CONFIG_FILE)
    return dst


def check_decoder_loads_bitwise(
    model: nn.Module, path: Path, loader: Callable[[nn.Module, Path], object] | None = None
) -> CheckResult:
    """Load the decoder with `loader` (default `load_pretrained_decoder`), then compare every
    decoder tensor of the model with the checkpoint's, bitwise, parameters and buffers apart."""
    from etrm.checkpoints import (
        CheckpointError,
        act_model_of,
        decoder_tensors,
        load_pretrained_decoder,
        read_state_dict,
    )

    loader = loader or load_pretrained_decoder
    try:
        report = loader(model, path)
    except CheckpointError as err:
        return CheckResult.fail(H, "decoder_loads_bitwise", f"loading failed: {err}")
    saved = decoder_tensors(read_state_dict(path))
    inner = act_model_of(model).inner
    params = dict(inner.named_parameters())
    buffers = {k: v for k, v in inner.state_dict().items() if k not in params}

    def equal(name: str, tensor: torch.Tensor) -> bool:
        source = saved.get(name)
        return source is not None and source.shape == tensor.shape and torch.equal(source.to(tensor), tensor.detach())

    bad_params = [n for n, t in params.items() if not equal(n, t)]
    bad_buffers = [n for n, t in buffers.items() if not equal(n, t)]
    skipped = len(getattr(report, "skipped", {}))
    message = (
        f"{len(params) - len(bad_params)} of {len(params)} decoder parameters equal the checkpoint bitwise; "
        f"buffers {', '.join(buffers)} compared separately: {len(buffers) - len(bad_buffers)} of {len(buffers)} "
        f"equal; {skipped} checkpoint tensors skipped (puzzle embedding, encoder)"
    )
    if bad_params or bad_buffers:
        message += f"; differing: {(bad_params + bad_buffers)[:5]}"
    return CheckResult.from_condition(
        H,
        "decoder_loads_bitwise",
        not bad_params and not bad_buffers,
        message,
        {
            "params": len(params),
            "params_equal": len(params) - len(bad_params),
            "buffers": len(buffers),
            "buffers_equal": len(buffers) - len(bad_buffers),
            "skipped": skipped,
        },
    )


def check_recursion_config(model: nn.Module, path: Path) -> CheckResult:
    """The model's recursion settings vs the checkpoint's saved config: verified (pass),
    differing (fail), or nothing saved to compare with (inconclusive)."""
    from etrm.checkpoints import act_model_of, find_saved_config
    from etrm.config.importer import DECODER_SETTINGS

    cfg = act_model_of(model).config
    saved = find_saved_config(path)
    values = {n: getattr(cfg, n) for n in DECODER_SETTINGS}
    if saved is None:
        return CheckResult.inconclusive(
            H,
            "recursion_config",
            f"no all_config.yaml or etrm metadata beside {path}: {', '.join(DECODER_SETTINGS)} "
            f"cannot be verified from the weights (L_cycles 4 vs 6 changes no tensor shape); model has {values}",
            {n: v for n, v in values.items()},
        )
    differ = {
        n: (values[n], getattr(saved.model_config, n))
        for n in DECODER_SETTINGS
        if values[n] != getattr(saved.model_config, n)
    }
    # Reported, not compared: running a bf16 checkpoint in fp32 is a legitimate choice.
    dtype = f"; forward_dtype: model {cfg.forward_dtype}, checkpoint {saved.model_config.forward_dtype}"
    return CheckResult.from_condition(
        H,
        "recursion_config",
        not differ,
        f"decoder settings vs {saved.source}: "
        + (
            "all equal " + str(values)
            if not differ
            else "; ".join(f"{n}: model {m}, checkpoint {s}" for n, (m, s) in differ.items())
        )
        + dtype,
        {"differing": len(differ)},
    )


def check_ema_provenance(path: Path) -> CheckResult:
    """Whether the checkpoint holds EMA weights, from saved metadata or config only."""
    from etrm.checkpoints import find_saved_config

    saved = find_saved_config(path)
    if saved is None or saved.ema == "unknown":
        return CheckResult.inconclusive(
            H,
            "ema_provenance",
            f"{path}: nothing saved beside the checkpoint says whether its weights are the EMA "
            "copy (weight statistics cannot tell); pass a checkpoint with its all_config.yaml",
        )
    return CheckResult.ok(
        H,
        "ema_provenance",
        f"{path.name} holds {'EMA' if saved.ema == 'ema' else 'raw (non-EMA)'} "
        f"weights according to {saved.source.name}",
        {"ema": saved.ema == "ema"},
    )


def check_decoder_drift_matches_freezing(trm_path: Path, etrm_path: Path) -> CheckResult:
    """Compare the decoder of an ETRM checkpoint with the TRM it started from: if the run
    kept the decoder frozen, every parameter must still be equal; if the decoder trained,
    drift is expected and reported (the investigation's "2/14 match" was such a run)."""
    from etrm.checkpoints import compare_decoders, find_saved_config, read_metadata

    comparison = compare_decoders(trm_path, etrm_path)
    saved = find_saved_config(etrm_path)
    meta = read_metadata(etrm_path)
    freeze = None if saved is None else saved.training.get("freeze_decoder_steps")
    steps = meta.step if meta is not None else (saved.training.get("total_steps") if saved else None)
    if steps is None:
        steps = step_from_name(etrm_path)
    equal, total = comparison.num_params_equal, len(comparison.params)
    drift = max((d.max_abs_diff or 0.0) for d in comparison.params) if comparison.params else 0.0
    numbers = {
        "params_equal": equal,
        "params": total,
        "max_abs_diff": drift,
        "buffers_equal": sum(d.equal for d in comparison.buffers),
        "buffers": len(comparison.buffers),
    }
    counts = (
        f"{equal}/{total} decoder parameters equal the TRM checkpoint (max |diff| {drift:.3g}); buffers "
        f"{numbers['buffers_equal']}/{numbers['buffers']} equal, counted apart"
    )
    if freeze is None or steps is None:
        return CheckResult.inconclusive(
            H,
            "decoder_drift_matches_freezing",
            f"{counts}; the ETRM run's freeze_decoder_steps/step are not saved, so drift "
            "cannot be told from a loading bug",
            numbers,
        )
    frozen = freeze > 0 and steps <= freeze  # the trainers' rule: frozen while step <= freeze_decoder_steps
    if frozen:
        return CheckResult.from_condition(
            H,
            "decoder_drift_matches_freezing",
            comparison.all_params_equal,
            f"{counts}; the run froze the decoder for all {steps} steps, so all must be equal",
            numbers,
        )
    return CheckResult.ok(
        H,
        "decoder_drift_matches_freezing",
        f"{counts}; expected: the decoder trained from step {freeze + 1} of {steps} "
        "(freeze_decoder_steps in its config)",
        numbers,
    )


def step_from_name(path: Path) -> int | None:
    """The training step of a checkpoint named `step_N`, as the official and origin trainers
    name every checkpoint (their files carry no step inside)."""
    match = re.fullmatch(r"step_(\d+)", Path(path).name)
    return int(match.group(1)) if match else None


def decoder_frozen_in_run(etrm_path: Path) -> bool | None:
    """Whether the run kept its decoder frozen up to this checkpoint, read from the raw
    all_config.yaml beside it (so a config of a model etrm does not implement serves too),
    by the trainers' rule, the step from the file name or else `total_steps`; None when
    the config does not say."""
    import yaml

    from etrm.config.importer import CONFIG_FILE

    path = Path(etrm_path).parent / CONFIG_FILE
    saved = yaml.safe_load(path.read_text()) if path.is_file() else None
    saved = saved if isinstance(saved, dict) else {}
    freeze, steps = saved.get("freeze_decoder_steps"), step_from_name(etrm_path) or saved.get("total_steps")
    if not isinstance(freeze, int) or not isinstance(steps, int):
        return None
    return freeze > 0 and steps <= freeze


def check_frozen_decoder_unchanged(
    head: nn.Module, batches: Iterable[dict], steps: int = 3, trainer_class: type | None = None
) -> CheckResult:
    """Train `steps` steps with the decoder frozen (weight decay on): every decoder tensor
    must stay bitwise equal while the encoder changes."""
    from etrm.checkpoints import act_model_of
    from etrm.training import Trainer, TrainingConfig

    act = act_model_of(head)
    before = {n: t.detach().clone() for n, t in act.inner.state_dict().items()}
    enc_before = {n: t.detach().clone() for n, t in act.encoder.state_dict().items()}
    batches = list(batches)[:steps]
    config = TrainingConfig(
        lr=1e-3,
        weight_decay=0.1,
        warmup_steps=0,
        global_batch_size=len(batches[0]["inputs"]),
        freeze_decoder_steps=steps,
        total_steps=steps,
    )
    trainer = (trainer_class or Trainer)(head, config)
    for batch in batches:
        trainer.step(batch)
    moved = [n for n, t in act.inner.state_dict().items() if not torch.equal(t, before[n])]
    enc_moved = sum(not torch.equal(t, enc_before[n]) for n, t in act.encoder.state_dict().items())
    return CheckResult.from_condition(
        H,
        "frozen_decoder_unchanged",
        not moved and enc_moved > 0,
        f"after {len(batches)} step{'s' if len(batches) != 1 else ''} with the decoder frozen (weight decay 0.1): {len(moved)} of {len(before)} decoder "
        f"tensors changed{' ' + str(moved[:4]) if moved else ''}; {enc_moved} encoder tensors changed",
        {"decoder_changed": len(moved), "decoder_tensors": len(before), "encoder_changed": enc_moved},
    )


def check_log_records_decoder_load(metrics: list[dict]) -> CheckResult:
    """Investigation Test 1.1 ("grep 'loading pretrained' <training_log>"): the run's metrics
    log records, before its first training step, that the pretrained decoder was loaded."""
    loads = [m for m in metrics if "pretrained_decoder/params_loaded" in m]
    first_train = min((m["step"] for m in metrics if "train/lm_loss" in m), default=None)
    if not loads:
        return CheckResult.inconclusive(
            H,
            "log_records_decoder_load",
            "the metrics log has no pretrained_decoder/* record, so it does not say whether "
            "a pretrained decoder was loaded (runs of etrm's experiment write one)",
        )
    load = loads[0]
    ok = (
        load["pretrained_decoder/params_loaded"] > 0
        and load.get("pretrained_decoder/params_missing", 0) == 0
        and (first_train is None or load["step"] < first_train)
    )
    return CheckResult.from_condition(
        H,
        "log_records_decoder_load",
        ok,
        f"log records loading {load['pretrained_decoder/params_loaded']} decoder parameters and "
        f"{load.get('pretrained_decoder/buffers_loaded', '?')} buffers from {load.get('pretrained_decoder/checkpoint')} "
        f"(sha256 {str(load.get('pretrained_decoder/sha256', '?'))[:12]}) at step "
        f"{load['step']} (first training step {first_train}); config {load.get('pretrained_decoder/config')}",
        {"params_loaded": load["pretrained_decoder/params_loaded"], "load_step": load["step"]},
    )


def check_model_decoder_matches_trm(model, trm_path: Path, frozen: bool | None) -> CheckResult:
    """The decoder a model holds (any model behind `etrm.interface`, loaded from its ETRM
    checkpoint) vs the TRM checkpoint it started from, bitwise, parameters and buffers apart.
    Every decoder tensor must exist in the TRM checkpoint with its shape (else the pretrained
    decoder cannot have loaded); all must be equal if the run kept the decoder `frozen`;
    drift is expected when it did not; `frozen` None (unknown) is inconclusive."""
    from etrm.checkpoints import normalize_key, read_state_dict
    from etrm.interface import as_interface

    model = as_interface(model)
    trm = {normalize_key(k): v for k, v in read_state_dict(trm_path).items()}
    params, buffers = model.decoder_tensors()
    absent = [n for n, t in {**params, **buffers}.items() if n not in trm or trm[n].shape != t.shape]
    differ = lambda part: [n for n, t in part.items() if n not in absent and not torch.equal(trm[n].to(t), t.detach())]  # noqa: E731
    bad_params, bad_buffers = differ(params), differ(buffers)
    unused = len(set(trm) - set(params) - set(buffers))
    numbers = {
        "params": len(params),
        "params_equal": len(params) - len(bad_params) - len(set(absent) & set(params)),
        "buffers": len(buffers),
        "buffers_equal": len(buffers) - len(bad_buffers) - len(set(absent) & set(buffers)),
        "absent_or_reshaped": len(absent),
        "trm_tensors_unused": unused,
    }
    counts = (
        f"{model.name}: {numbers['params_equal']}/{len(params)} decoder parameters and {numbers['buffers_equal']}/"
        f"{len(buffers)} buffers ({', '.join(k.rsplit('.', 1)[-1] for k in buffers)}) equal {Path(trm_path).name} "
        f"bitwise; {unused} TRM tensors not in this decoder (puzzle embedding)"
    )
    if absent:
        return CheckResult.fail(
            H,
            "model_decoder_matches_trm",
            f"{counts}; missing from the TRM checkpoint or shaped "
            f"differently: {absent[:4]}: the pretrained decoder cannot have loaded into them",
            numbers,
        )
    if frozen is None:
        return CheckResult.inconclusive(
            H,
            "model_decoder_matches_trm",
            f"{counts}; the run's all_config.yaml does not say "
            "whether the decoder was frozen (freeze_decoder_steps, step)",
            numbers,
        )
    if frozen:
        return CheckResult.from_condition(
            H,
            "model_decoder_matches_trm",
            not bad_params and not bad_buffers,
            f"{counts}; the run kept the decoder frozen, so all must be equal"
            + (f"; differing: {(bad_params + bad_buffers)[:4]}" if bad_params or bad_buffers else ""),
            numbers,
        )
    return CheckResult.ok(H, "model_decoder_matches_trm", f"{counts}; expected: the run trained its decoder", numbers)
