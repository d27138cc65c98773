"""Our own checkpoints: saving in the official layout with metadata, and loading whole models."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from etrm import __version__
from etrm.checkpoints.errors import CheckpointError, ConfigMismatchError
from etrm.checkpoints.layouts import DECODER_PREFIX, LOSS_HEAD_PREFIX, OFFICIAL_PREFIX, act_key, unwrap_module
from etrm.checkpoints.metadata import (
    CheckpointMetadata,
    _mismatch_message,
    find_saved_config,
    read_metadata,
    recursion_mismatches,
    sidecar_path,
)
from etrm.checkpoints.pretrained import act_model_of
from etrm.checkpoints.reading import count_nonfinite, read_state_dict
from etrm.config import ModelConfig
from etrm.config.importer import CONFIG_FILE, normalize_training_hparams, training_config_text
from etrm.models import ACTModel, LossHead, build_model


def save_checkpoint(
    path: str | Path,
    head_or_model: nn.Module,
    *,
    step: int,
    ema_rate: float | None = None,
    is_ema: bool = False,
    training_config: Mapping[str, Any] | Any | None = None,
    compiled_layout: bool = True,
) -> Path:
    """Save a LossHead or ACT model (compiled/DDP-wrapped or not) in the official layout.

    Writes `path` (a torch.save'd plain state dict, zip format, keys
    `_orig_mod.model.inner.*` / `_orig_mod.model.encoder.*`, or without `_orig_mod.` when
    `compiled_layout=False`), `<path>.etrm.json` (model config, step, whether the weights
    are an EMA copy and the rate, etrm version) and `all_config.yaml` in the same folder
    (official layout; see `etrm.config.importer.write_training_config` for
    `training_config`). The all_config.yaml describes the run, so an existing one with
    different content is an error rather than overwritten. Files are replaced atomically.
    """
    path = Path(path)
    module = unwrap_module(head_or_model)
    act = act_model_of(module)
    if not isinstance(act, ACTModel):
        raise TypeError(f"save_checkpoint saves a LossHead or an ACT model, got {type(act).__name__}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    if is_ema and ema_rate is None:
        raise ValueError("is_ema=True needs the ema_rate the copy was averaged with")
    hparams = normalize_training_hparams(training_config)
    if is_ema and hparams.get("ema") is False:
        raise ValueError("is_ema=True but the training config says ema: false")
    if ema_rate is not None and hparams.setdefault("ema_rate", float(ema_rate)) != float(ema_rate):
        raise ValueError(f"ema_rate {ema_rate} differs from the training config's ema_rate {hparams['ema_rate']}")
    hparams.setdefault("ema", ema_rate is not None)

    config_file = path.parent / CONFIG_FILE
    text = training_config_text(act.config, hparams)
    if config_file.is_file() and config_file.read_text() != text:
        raise CheckpointError(
            f"{config_file} already describes a different run (model or training settings differ); "
            "save this checkpoint into its own directory"
        )
    layout = OFFICIAL_PREFIX if compiled_layout else LOSS_HEAD_PREFIX
    state = {layout + act_key(k): v.detach().cpu() for k, v in module.state_dict().items()}
    metadata = CheckpointMetadata(
        model_config=act.config,
        step=step,
        is_ema=is_ema,
        ema_rate=None if ema_rate is None else float(ema_rate),
        etrm_version=__version__,
        key_layout=layout,
        training=hparams or None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: torch.save(state, tmp))
    _atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(metadata.to_json()))
    if not config_file.is_file():
        _atomic_write(config_file, lambda tmp: tmp.write_text(text))
    return path


def load_checkpoint(
    path: str | Path, *, allow_legacy: bool = True
) -> tuple[dict[str, torch.Tensor], CheckpointMetadata | None]:
    """(state dict with the file's own keys, our metadata or None for a foreign checkpoint)."""
    return read_state_dict(path, allow_legacy=allow_legacy), read_metadata(path)


def load_model(path: str | Path, model_config: ModelConfig | None = None, *, allow_legacy: bool = True) -> LossHead:
    """A LossHead rebuilt from a checkpoint of any key layout.

    The config is `model_config`, else our metadata, else the all_config.yaml beside the
    checkpoint (with `num_puzzle_identifiers` read from the shape of `puzzle_emb.weights`).
    A given config whose recursion settings differ from a saved one is an error. Every
    tensor must match the model exactly (missing, unexpected, misshapen and non-finite
    tensors are errors naming them).
    """
    path = Path(path)
    state = read_state_dict(path, allow_legacy=allow_legacy)
    saved = find_saved_config(path)
    if model_config is None:
        if saved is None:
            raise CheckpointError(f"{path}: no etrm metadata or {CONFIG_FILE} beside the checkpoint; pass model_config")
        if saved.foreign_encoder is not None:
            raise CheckpointError(
                f"{path}: encoder_type {saved.foreign_encoder!r} ({saved.source}) has no etrm "
                "implementation; run the origin's own model code with --model-code ROOT"
            )
        model_config = saved.model_config
        table = next((t for k, t in state.items() if act_key(k) == DECODER_PREFIX + "puzzle_emb.weights"), None)
        if saved.kind == CONFIG_FILE and table is not None:
            model_config = model_config.replace(num_puzzle_identifiers=table.shape[0])
    elif saved is not None and (mismatches := recursion_mismatches(model_config, saved.model_config)):
        raise ConfigMismatchError(_mismatch_message(path, saved, mismatches))

    head = build_model(model_config)
    targets = head.state_dict(keep_vars=True)
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        name = LOSS_HEAD_PREFIX + act_key(key)
        if name in mapped:
            raise CheckpointError(f"{path}: {name} appears twice under different prefixes")
        mapped[name] = tensor
    problems = []
    missing, unexpected = [k for k in targets if k not in mapped], [k for k in mapped if k not in targets]
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    problems += [
        f"{k}: checkpoint shape {tuple(t.shape)}, model shape {tuple(targets[k].shape)}"
        for k, t in mapped.items()
        if k in targets and t.shape != targets[k].shape
    ]
    problems += [f"{k}: {c} NaN/Inf value(s)" for k, t in mapped.items() if (c := count_nonfinite(t))]
    if problems:
        raise CheckpointError(f"{path}: does not fit a {model_config.model_type} model: " + "; ".join(problems))
    with torch.no_grad():
        for key, tensor in mapped.items():
            targets[key].copy_(tensor)
    return head


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
