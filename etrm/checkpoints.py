"""Checkpoints (DESIGN.md section 4): safe reading, key layouts, loading a pretrained
decoder into ETRM, our own checkpoints with metadata, EMA provenance, decoder
comparison, and the `etrm inspect` / `etrm verify-decoder` commands.

Layouts. The official trainer saves `state_dict()` of `torch.compile(ACTLossHead(TRM))`:
keys `_orig_mod.model.inner.*` (decoder) and, for the origin ETRM,
`_orig_mod.model.encoder.*`. Without compile there is no `_orig_mod.`, under DDP there
is a `module.`, and a bare ACT model has no loss-head level `model.`. `normalize_key`
strips the wrappers (only as prefixes, in any combination) and `act_key` also the
loss-head level, so every layout maps onto `inner.*` / `encoder.*`.

Safety. Every file is read with `torch.load(weights_only=True)`, so loading never runs
code, and memory-mapped (`mmap=True`, zip format), so a 1.8 GB `puzzle_emb.weights`
that is never touched is never read. A legacy (pre-zip) file cannot be memory-mapped:
`read_state_dict` then loads it whole with a `LegacyCheckpointWarning` saying so, or,
with `allow_legacy=False`, refuses it with the same explanation.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from etrm import __version__
from etrm.config import ConfigError, ModelConfig
from etrm.config_import import (CONFIG_FILE, DECODER_SETTINGS, import_training_config,
                                normalize_training_hparams, training_config_text)
from etrm.models import ACTModel, LossHead, build_model

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP / DataParallel
LOSS_HEAD_PREFIX = "model."
DECODER_PREFIX = "inner."
ENCODER_PREFIX = "encoder."
OFFICIAL_PREFIX = "_orig_mod.model."
PUZZLE_EMB_PREFIX = "puzzle_emb."
# Persistent buffers of the decoder and the encoders (everything else they save is a
# parameter); tests keep these in step with the modules.
DECODER_BUFFERS = frozenset({"H_init", "L_init", "puzzle_emb.weights"})
ENCODER_BUFFERS: frozenset[str] = frozenset()
SIDECAR_SUFFIX = ".etrm.json"
METADATA_FORMAT = "etrm-checkpoint-metadata/1"
PROVENANCES = ("ema", "raw", "unknown")
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_CHUNK = 1 << 22  # elements per chunk when scanning big tensors


class CheckpointError(ValueError):
    """A checkpoint cannot be read or loaded; the message names the file and key at fault."""


class ConfigMismatchError(CheckpointError):
    """A recursion setting of the model differs from the checkpoint's saved config."""


class DecoderLoadError(CheckpointError):
    """Decoder tensors that did not load; `.report` has the full DecoderLoadReport."""

    def __init__(self, message: str, report: "DecoderLoadReport"):
        super().__init__(message)
        self.report = report


class LegacyCheckpointWarning(UserWarning):
    """A legacy (non-zip) checkpoint was loaded whole because it cannot be memory-mapped."""


# --- key layouts ------------------------------------------------------------------------------

def unwrap_module(module: nn.Module) -> nn.Module:
    """The module under torch.compile (`_orig_mod`) and DDP/DataParallel (`module`) wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            module = inner
        elif isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        else:
            return module


def split_prefix(key: str) -> tuple[str, str]:
    """(wrapper prefixes, rest): `_orig_mod.` and `module.` stripped, in any combination,
    only at the start, so a key with "module." in the middle keeps it."""
    start = 0
    while True:
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix, start):
                start += len(prefix)
                break
        else:
            return key[:start], key[start:]


def normalize_key(key: str) -> str:
    """`key` without its `_orig_mod.` / `module.` prefixes (loss-head level kept)."""
    return split_prefix(key)[1]


def act_key(key: str) -> str:
    """`key` relative to the ACT model (`inner.*`, `encoder.*`): wrappers and the loss
    head's `model.` level stripped. (The ACT model has no submodule called `model`.)"""
    rest = normalize_key(key)
    return rest[len(LOSS_HEAD_PREFIX):] if rest.startswith(LOSS_HEAD_PREFIX) else rest


def key_layout(key: str) -> str:
    """The prefix in front of `inner.` / `encoder.`, e.g. "_orig_mod.model." (official)."""
    return key[: len(key) - len(act_key(key))]


def classify_key(key: str) -> tuple[str, str, str]:
    """(component, name, kind): component "decoder" / "encoder" / "other", the name inside
    the component, and "param" / "buffer" / "unknown" by the known buffer names."""
    rel = act_key(key)
    if rel.startswith(DECODER_PREFIX):
        name = rel[len(DECODER_PREFIX):]
        return "decoder", name, "buffer" if name in DECODER_BUFFERS else "param"
    if rel.startswith(ENCODER_PREFIX):
        name = rel[len(ENCODER_PREFIX):]
        return "encoder", name, "buffer" if name in ENCODER_BUFFERS else "param"
    return "other", rel, "unknown"


# --- reading ----------------------------------------------------------------------------------

def read_state_dict(path: str | Path, *, map_location: str | torch.device = "cpu",
                    allow_legacy: bool = True) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, memory-mapped and loaded without running any code.

    Accepts a plain state dict (what the official trainer saves) or a training bundle
    whose "model" entry is one. Missing, empty, truncated or corrupt files, pickles
    that would construct arbitrary objects (refused: nothing is executed), and payloads
    that are not a mapping of names to tensors raise `CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory; give the checkpoint file inside it "
                              "(the official trainer writes files named step_<N>)")
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not magic:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    zip_format = magic == _ZIP_MAGIC
    if not zip_format:
        if magic[:1] != _PICKLE_PROTO:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither the zip format nor a legacy pickle)")
        message = (f"{path}: legacy (non-zip) checkpoint format: it cannot be memory-mapped, so the whole file "
                   f"({_size(path.stat().st_size)}) is read into memory, puzzle_emb.weights included; re-save it "
                   "with torch.save (zip format, the default since PyTorch 1.6) to load it lazily")
        if not allow_legacy:
            raise CheckpointError(message)
        warnings.warn(message, LegacyCheckpointWarning, stacklevel=2)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=zip_format)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text:
            reason = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line), "")
            raise CheckpointError(f"{path}: refused: the file holds objects whose unpickling would run code "
                                  f"({reason or 'unsupported global'}); checkpoints are loaded with weights_only=True "
                                  "and nothing in them is executed") from None
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({text})") from None
    except Exception as err:  # any other read failure means a damaged file
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__}: {err})") from None

    if isinstance(payload, Mapping) and isinstance(payload.get("model"), Mapping):
        payload = payload["model"]  # resume bundle {"model": state_dict, "optimizers": ..., "step": ...}
    if not isinstance(payload, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of names to tensors), got {type(payload).__name__}")
    if not payload:
        raise CheckpointError(f"{path}: the state dict is empty")
    for key, value in payload.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{path}: not a state dict: entry {key!r} holds a {type(value).__name__}, not a tensor")
    return dict(payload)


def count_nonfinite(tensor: torch.Tensor) -> int:
    """NaN + Inf entries, scanned in chunks so a huge table needs no full-size temporary."""
    if not tensor.is_floating_point():
        return 0
    flat = tensor.reshape(-1)
    return sum(int((~torch.isfinite(flat[i:i + _CHUNK])).sum()) for i in range(0, flat.numel(), _CHUNK))


def tensor_stats(tensor: torch.Tensor) -> dict[str, float | int]:
    """min / max / mean / std over the finite entries (float64 sums), plus NaN and Inf counts."""
    flat = tensor.reshape(-1)
    count, total, squares = 0, 0.0, 0.0
    low, high, nans, infs = math.inf, -math.inf, 0, 0
    for i in range(0, flat.numel(), _CHUNK):
        chunk = flat[i:i + _CHUNK].double()
        finite = torch.isfinite(chunk)
        nans += int(torch.isnan(chunk).sum())
        infs += int(torch.isinf(chunk).sum())
        values = chunk[finite]
        if values.numel():
            count += values.numel()
            total += float(values.sum())
            squares += float(values.square().sum())
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    mean = total / count if count else math.nan
    var = (squares - count * mean * mean) / (count - 1) if count > 1 else math.nan
    return {"min": low if count else math.nan, "max": high if count else math.nan, "mean": mean,
            "std": math.sqrt(max(var, 0.0)) if count > 1 else math.nan, "nan": nans, "inf": infs}


# --- saved configs and metadata ---------------------------------------------------------------

@dataclass(frozen=True)
class CheckpointMetadata:
    """What our checkpoints record beside the weights (`<checkpoint>.etrm.json`)."""

    model_config: ModelConfig
    step: int
    is_ema: bool
    ema_rate: float | None
    etrm_version: str
    key_layout: str
    training: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps({"format": METADATA_FORMAT, "model_config": self.model_config.to_dict(), "step": self.step,
                           "is_ema": self.is_ema, "ema_rate": self.ema_rate, "etrm_version": self.etrm_version,
                           "key_layout": self.key_layout, "training": self.training}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str | Path) -> "CheckpointMetadata":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{source}: metadata is not valid JSON ({err})") from None
        expected = {"format", "model_config", "step", "is_ema", "ema_rate", "etrm_version", "key_layout", "training"}
        if not isinstance(data, dict) or data.get("format") != METADATA_FORMAT:
            raise CheckpointError(f"{source}: not etrm checkpoint metadata (format {METADATA_FORMAT!r} expected)")
        if set(data) != expected:
            raise CheckpointError(f"{source}: metadata keys missing {sorted(expected - set(data))}, "
                                  f"unknown {sorted(set(data) - expected)}")
        if not isinstance(data["is_ema"], bool) or not isinstance(data["step"], int):
            raise CheckpointError(f"{source}: metadata is_ema must be a bool and step an int")
        try:
            config = ModelConfig.from_dict(data["model_config"], source=f"{source} model_config")
        except (ConfigError, TypeError) as err:
            raise CheckpointError(f"{source}: {err}") from None
        return cls(model_config=config, step=data["step"], is_ema=data["is_ema"], ema_rate=data["ema_rate"],
                   etrm_version=data["etrm_version"], key_layout=data["key_layout"], training=data["training"])


@dataclass(frozen=True)
class SavedConfig:
    """The training config found beside a checkpoint: our metadata or a trainer's all_config.yaml."""

    source: Path
    kind: str  # "etrm metadata" | "all_config.yaml"
    model_config: ModelConfig
    ema: str  # EMA provenance of the weights: "ema" | "raw" | "unknown"
    training: dict[str, Any] = field(default_factory=dict)
    foreign_encoder: str | None = None  # an origin encoder type etrm does not implement


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + SIDECAR_SUFFIX)


def read_metadata(path: str | Path) -> CheckpointMetadata | None:
    """Our metadata for the checkpoint at `path`, or None when it has none."""
    meta = sidecar_path(path)
    return CheckpointMetadata.from_json(meta.read_text(), meta) if meta.is_file() else None


def find_saved_config(path: str | Path, *, config_path: str | Path | None = None) -> SavedConfig | None:
    """The config saved with a checkpoint: `config_path` if given, else our metadata
    (`<checkpoint>.etrm.json`), else `all_config.yaml` in the same folder; None if none.

    From an all_config.yaml, `ema: true` means the weights are the EMA copy: the official
    trainer saves the EMA model at each evaluation when EMA is on."""
    path = Path(path)
    if config_path is None:
        meta = read_metadata(path)
        if meta is not None:
            return SavedConfig(sidecar_path(path), "etrm metadata", meta.model_config,
                               "ema" if meta.is_ema else "raw", dict(meta.training or {}))
        config_path = path.parent / CONFIG_FILE
        if not config_path.is_file():
            return None
    imported = import_training_config(config_path)
    ema = {True: "ema", False: "raw"}.get(imported.ema, "unknown")
    return SavedConfig(Path(config_path), CONFIG_FILE, imported.model_config, ema, imported.training,
                       imported.foreign_encoder)


def ema_provenance(path: str | Path) -> str:
    """"ema", "raw" or "unknown": whether a checkpoint holds EMA weights, from its saved
    metadata or training config ONLY. Never from weight statistics: the investigation
    "confirmed" EMA from low std values, which says nothing (a raw model can have low std
    and an EMA copy high std); nothing inside the file records it."""
    saved = find_saved_config(path)
    return "unknown" if saved is None else saved.ema


def recursion_mismatches(model_config: ModelConfig, saved: ModelConfig) -> dict[str, tuple[Any, Any]]:
    """DECODER_SETTINGS that differ: name -> (model value, saved value)."""
    return {name: (getattr(model_config, name), getattr(saved, name))
            for name in DECODER_SETTINGS if getattr(model_config, name) != getattr(saved, name)}


def _mismatch_message(path: Path, saved: SavedConfig, mismatches: dict[str, tuple[Any, Any]]) -> str:
    parts = "; ".join(f"{name}: model {m!r}, checkpoint {s!r}" for name, (m, s) in mismatches.items())
    return (f"{path}: recursion settings differ from the checkpoint's saved config ({saved.source}): {parts}. "
            "The weights were trained with the checkpoint's settings; build the model with them")


# --- loading a pretrained decoder -------------------------------------------------------------

@dataclass(frozen=True)
class DecoderLoadReport:
    """What `load_pretrained_decoder` did, parameters and buffers counted apart. Decoder
    names are relative to the decoder (`L_level.layers.0.mlp.down_proj.weight`); skipped
    and unexpected entries are the checkpoint's own keys."""

    path: Path
    key_layouts: tuple[str, ...]
    loaded_params: tuple[str, ...]
    loaded_buffers: tuple[str, ...]
    skipped: dict[str, str]  # checkpoint key -> why it was not loaded
    missing_params: tuple[str, ...]
    missing_buffers: tuple[str, ...]
    unexpected: tuple[str, ...]
    duplicates: tuple[str, ...]
    shape_mismatches: dict[str, tuple[tuple[int, ...], tuple[int, ...]]]  # name -> (checkpoint, model)
    nonfinite: dict[str, int]  # name -> NaN/Inf count
    dtype_casts: dict[str, tuple[str, str]]  # name -> (checkpoint dtype, model dtype)
    config_status: str  # "verified" | "unverified" | "mismatch"
    config_source: str | None
    settings: dict[str, tuple[Any, Any]]  # DECODER_SETTINGS name -> (model, saved or None)

    @property
    def unverified_settings(self) -> tuple[str, ...]:
        return tuple(self.settings) if self.config_status == "unverified" else ()

    @property
    def config_mismatches(self) -> dict[str, tuple[Any, Any]]:
        return {n: v for n, v in self.settings.items() if v[1] is not None and v[0] != v[1]}

    def problems(self) -> list[str]:
        """Every reason the decoder did not (or would not) load exactly; empty when it did."""
        out = []
        if self.missing_params or self.missing_buffers:
            out.append(f"decoder tensors missing from the checkpoint: {list(self.missing_params + self.missing_buffers)}"
                       f" (key layouts found: {list(self.key_layouts)})")
        if self.unexpected:
            out.append(f"checkpoint keys that are not decoder tensors of this model: {list(self.unexpected)}")
        if self.duplicates:
            out.append(f"decoder tensors present twice under different prefixes: {list(self.duplicates)}")
        for name, (ckpt, model) in self.shape_mismatches.items():
            out.append(f"{name}: checkpoint shape {ckpt}, model shape {model}")
        for name, count in self.nonfinite.items():
            out.append(f"{name}: {count} NaN/Inf value(s) in the checkpoint")
        for name, (model, saved) in self.config_mismatches.items():
            out.append(f"{name}: model {model!r}, checkpoint config {saved!r}")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems()

    def summary(self) -> str:
        n_params = len(self.loaded_params) + len(self.missing_params)
        n_buffers = len(self.loaded_buffers) + len(self.missing_buffers)
        lines = [f"Pretrained decoder from {self.path} (key layout {', '.join(repr(k) for k in self.key_layouts)}):",
                 f"  parameters: {len(self.loaded_params)}/{n_params} loaded",
                 f"  buffers:    {len(self.loaded_buffers)}/{n_buffers} loaded ({', '.join(self.loaded_buffers) or '-'}; "
                 "buffers are never trained, so they are counted apart)"]
        if self.dtype_casts:
            lines.append("  cast:       " + ", ".join(f"{n} {a}->{b}" for n, (a, b) in self.dtype_casts.items()))
        by_reason: dict[str, list[str]] = {}
        for key, why in self.skipped.items():
            by_reason.setdefault(why, []).append(key)
        for why, keys in by_reason.items():
            what = keys[0] if len(keys) == 1 else f"{len(keys)} tensors ({keys[0]}, ...)"
            lines.append(f"  skipped:    {what}: {why}")
        values = ", ".join(f"{n} {m}" for n, (m, _) in self.settings.items())
        if self.config_status == "verified":
            lines.append(f"  config:     verified against {self.config_source}: {values}")
        elif self.config_status == "unverified":
            lines.append(f"  config:     UNVERIFIED: no all_config.yaml or etrm metadata beside the checkpoint, so "
                         f"{', '.join(self.settings)} cannot be checked (L_cycles 4 vs 6 changes no tensor shape); "
                         f"model has {values}")
        else:
            lines.append(f"  config:     MISMATCH with {self.config_source}")
        lines += [f"  problem:    {p}" for p in self.problems()]
        return "\n".join(lines)


def act_model_of(model: nn.Module) -> nn.Module:
    """The ACT model inside a LossHead and any compile/DDP wrappers."""
    model = unwrap_module(model)
    return unwrap_module(model.model) if isinstance(model, LossHead) else model


def load_pretrained_decoder(model: nn.Module, path: str | Path, *, map_location: str | torch.device = "cpu",
                            config_path: str | Path | None = None, allow_legacy: bool = True) -> DecoderLoadReport:
    """Load a TRM (or ETRM) checkpoint's decoder into an ETRM/ETRMTRM model (or its LossHead).

    Prefixes are normalised (any key layout loads); `puzzle_emb.*` is skipped without
    being read (the file is memory-mapped and the table never touched); every decoder
    tensor, parameters and the H_init/L_init buffers, is loaded. Nothing is modified
    unless everything loads: a missing, unexpected, duplicated, misshapen or non-finite
    decoder tensor raises `DecoderLoadError` naming it, and a recursion setting that
    differs from the checkpoint's saved config (see `find_saved_config`) raises
    `ConfigMismatchError` naming both values. Without a saved config the report marks
    the settings unverified. `map_location` is where the decoder tensors are staged
    before being copied into the model.
    """
    path = Path(path)
    act = act_model_of(model)
    if not hasattr(act, "encoder"):
        raise TypeError(f"load_pretrained_decoder loads into ETRM/ETRMTRM, got {type(act).__name__}; "
                        "load a whole TRM with load_model")
    state = read_state_dict(path, allow_legacy=allow_legacy)
    targets = act.inner.state_dict(keep_vars=True)  # persistent tensors only: RoPE tables are not saved
    param_names = {name for name, _ in act.inner.named_parameters()}

    found: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    unexpected, duplicates, layouts = [], [], []
    for key, tensor in state.items():
        component, name, _ = classify_key(key)
        layout = key_layout(key)
        if layout not in layouts:
            layouts.append(layout)
        if component == "decoder" and name.startswith(PUZZLE_EMB_PREFIX):
            skipped[key] = "TRM puzzle embedding; ETRM's prefix comes from its encoder (memory-mapped, never read)"
        elif component == "encoder":
            skipped[key] = "encoder tensor, not part of the decoder"
        elif component == "decoder" and name in targets:
            if name in found:
                duplicates.append(name)
            found[name] = tensor
        else:
            unexpected.append(key)

    shapes = {n: (tuple(t.shape), tuple(targets[n].shape)) for n, t in found.items() if t.shape != targets[n].shape}
    staged = {n: t.to(map_location) for n, t in found.items() if n not in shapes}
    nonfinite = {n: c for n, t in staged.items() if (c := count_nonfinite(t))}
    casts = {n: (str(t.dtype).removeprefix("torch."), str(targets[n].dtype).removeprefix("torch."))
             for n, t in staged.items() if t.dtype != targets[n].dtype}

    saved = find_saved_config(path, config_path=config_path)
    cfg = act.config
    if saved is None:
        status, source = "unverified", None
        settings = {n: (getattr(cfg, n), None) for n in DECODER_SETTINGS}
    else:
        source = str(saved.source)
        settings = {n: (getattr(cfg, n), getattr(saved.model_config, n)) for n in DECODER_SETTINGS}
        status = "mismatch" if recursion_mismatches(cfg, saved.model_config) else "verified"

    report = DecoderLoadReport(
        path=path, key_layouts=tuple(layouts),
        loaded_params=tuple(n for n in targets if n in staged and n in param_names),
        loaded_buffers=tuple(n for n in targets if n in staged and n not in param_names),
        skipped=skipped,
        missing_params=tuple(n for n in targets if n not in found and n in param_names),
        missing_buffers=tuple(n for n in targets if n not in found and n not in param_names),
        unexpected=tuple(unexpected), duplicates=tuple(duplicates), shape_mismatches=shapes,
        nonfinite=nonfinite, dtype_casts=casts, config_status=status, config_source=source, settings=settings)
    if status == "mismatch":
        raise ConfigMismatchError(_mismatch_message(path, saved, report.config_mismatches))
    problems = report.problems()
    if problems:
        raise DecoderLoadError(f"{path}: the pretrained decoder did not load: " + "; ".join(problems), report)
    with torch.no_grad():
        for name, tensor in staged.items():
            targets[name].copy_(tensor)
    return report


# --- our checkpoints --------------------------------------------------------------------------

def save_checkpoint(path: str | Path, head_or_model: nn.Module, *, step: int, ema_rate: float | None = None,
                    is_ema: bool = False, training_config: Mapping[str, Any] | Any | None = None,
                    compiled_layout: bool = True) -> Path:
    """Save a LossHead or ACT model (compiled/DDP-wrapped or not) in the official layout.

    Writes `path` (a torch.save'd plain state dict, zip format, keys
    `_orig_mod.model.inner.*` / `_orig_mod.model.encoder.*`, or without `_orig_mod.` when
    `compiled_layout=False`), `<path>.etrm.json` (model config, step, whether the weights
    are an EMA copy and the rate, etrm version) and `all_config.yaml` in the same folder
    (official layout; see `etrm.config_import.write_training_config` for
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
        raise CheckpointError(f"{config_file} already describes a different run (model or training settings differ); "
                              "save this checkpoint into its own directory")
    layout = (OFFICIAL_PREFIX if compiled_layout else LOSS_HEAD_PREFIX)
    state = {layout + act_key(k): v.detach().cpu() for k, v in module.state_dict().items()}
    metadata = CheckpointMetadata(model_config=act.config, step=step, is_ema=is_ema,
                                  ema_rate=None if ema_rate is None else float(ema_rate),
                                  etrm_version=__version__, key_layout=layout, training=hparams or None)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda tmp: torch.save(state, tmp))
    _atomic_write(sidecar_path(path), lambda tmp: tmp.write_text(metadata.to_json()))
    if not config_file.is_file():
        _atomic_write(config_file, lambda tmp: tmp.write_text(text))
    return path


def load_checkpoint(path: str | Path, *, allow_legacy: bool = True) -> tuple[dict[str, torch.Tensor], CheckpointMetadata | None]:
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
            raise CheckpointError(f"{path}: encoder_type {saved.foreign_encoder!r} ({saved.source}) has no etrm "
                                  "implementation; run the origin's own model code with --model-code ROOT")
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
    problems += [f"{k}: checkpoint shape {tuple(t.shape)}, model shape {tuple(targets[k].shape)}"
                 for k, t in mapped.items() if k in targets and t.shape != targets[k].shape]
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


# --- comparing decoders -----------------------------------------------------------------------

@dataclass(frozen=True)
class TensorDiff:
    """One decoder tensor in two checkpoints. `equal`: same shape and identical values."""

    name: str
    kind: str  # "param" | "buffer"
    shape: tuple[int, ...]
    other_shape: tuple[int, ...]
    dtypes: tuple[str, str]
    equal: bool
    max_abs_diff: float | None  # None when the shapes differ
    mean_abs_diff: float | None


@dataclass(frozen=True)
class DecoderComparison:
    """Decoder tensors of a TRM checkpoint vs an ETRM checkpoint, parameters and buffers apart."""

    trm_path: Path
    etrm_path: Path
    params: tuple[TensorDiff, ...]
    buffers: tuple[TensorDiff, ...]
    only_in_trm: tuple[str, ...]
    only_in_etrm: tuple[str, ...]

    @property
    def num_params_equal(self) -> int:
        return sum(d.equal for d in self.params)

    @property
    def all_params_equal(self) -> bool:
        """Every decoder parameter is in both checkpoints with identical values."""
        only = [n for n in self.only_in_trm + self.only_in_etrm if n not in DECODER_BUFFERS]
        return bool(self.params) and not only and all(d.equal for d in self.params)

    def summary(self) -> str:
        lines = [f"Decoder of {self.trm_path} (TRM) vs {self.etrm_path} (ETRM); puzzle_emb.* not compared",
                 f"parameters: {self.num_params_equal}/{len(self.params)} equal",
                 f"buffers:    {sum(d.equal for d in self.buffers)}/{len(self.buffers)} equal "
                 "(never trained: compared apart from the parameters)"]
        width = max([len(d.name) for d in self.params + self.buffers] + [4])
        lines.append(f"  {'kind':6} {'name':{width}} {'equal':5} {'max|diff|':>11} {'mean|diff|':>11}")
        for d in self.params + self.buffers:
            if d.max_abs_diff is None:
                lines.append(f"  {d.kind:6} {d.name:{width}} {'no':5} shape {d.shape} vs {d.other_shape}")
            else:
                dt = "" if d.dtypes[0] == d.dtypes[1] else f"  dtype {d.dtypes[0]} vs {d.dtypes[1]}"
                lines.append(f"  {d.kind:6} {d.name:{width}} {'yes' if d.equal else 'no':5} "
                             f"{d.max_abs_diff:11.4g} {d.mean_abs_diff:11.4g}{dt}")
        if self.only_in_trm:
            lines.append(f"only in the TRM checkpoint: {list(self.only_in_trm)}")
        if self.only_in_etrm:
            lines.append(f"only in the ETRM checkpoint: {list(self.only_in_etrm)}")
        lines.append("verdict: every decoder parameter equal" if self.all_params_equal
                     else "verdict: decoder parameters differ")
        return "\n".join(lines)


def decoder_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Decoder tensors of a state dict by decoder-relative name, `puzzle_emb.*` left out."""
    out = {}
    for key, tensor in state.items():
        component, name, _ = classify_key(key)
        if component == "decoder" and not name.startswith(PUZZLE_EMB_PREFIX):
            out[name] = tensor
    return out


def compare_decoders(trm_path: str | Path, etrm_path: str | Path) -> DecoderComparison:
    """Compare the decoder tensors of two checkpoints (any key layouts), per tensor."""
    a = decoder_tensors(read_state_dict(trm_path))
    b = decoder_tensors(read_state_dict(etrm_path))
    if not a:
        raise CheckpointError(f"{trm_path}: no decoder tensors (keys under inner.*) in the checkpoint")
    if not b:
        raise CheckpointError(f"{etrm_path}: no decoder tensors (keys under inner.*) in the checkpoint")
    params, buffers = [], []
    for name in (n for n in a if n in b):
        x, y = a[name], b[name]
        kind = "buffer" if name in DECODER_BUFFERS else "param"
        dtypes = (str(x.dtype).removeprefix("torch."), str(y.dtype).removeprefix("torch."))
        if x.shape != y.shape:
            diff = TensorDiff(name, kind, tuple(x.shape), tuple(y.shape), dtypes, False, None, None)
        else:
            x64, y64 = x.double(), y.double()
            delta = (x64 - y64).abs()
            diff = TensorDiff(name, kind, tuple(x.shape), tuple(y.shape), dtypes, bool(torch.equal(x64, y64)),
                              float(delta.max()) if delta.numel() else 0.0,
                              float(delta.mean()) if delta.numel() else 0.0)
        (buffers if kind == "buffer" else params).append(diff)
    return DecoderComparison(Path(trm_path), Path(etrm_path), tuple(params), tuple(buffers),
                             tuple(n for n in a if n not in b), tuple(n for n in b if n not in a))


# --- inspection -------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorInfo:
    key: str
    component: str  # "decoder" | "encoder" | "other"
    kind: str  # "param" | "buffer" | "unknown"
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    stats: dict[str, float | int] | None  # None when skipped (see `skipped`)
    skipped: str | None = None


@dataclass(frozen=True)
class CheckpointInspection:
    """Everything `etrm inspect` prints, for reuse by the checks."""

    path: Path
    tensors: tuple[TensorInfo, ...]
    saved_config: SavedConfig | None
    metadata: CheckpointMetadata | None

    @property
    def ema_provenance(self) -> str:
        return "unknown" if self.saved_config is None else self.saved_config.ema

    @property
    def nonfinite_keys(self) -> tuple[str, ...]:
        return tuple(t.key for t in self.tensors if t.stats and (t.stats["nan"] or t.stats["inf"]))

    def summary(self) -> str:
        layouts = sorted({key_layout(t.key) for t in self.tensors})
        total = sum(t.nbytes for t in self.tensors)
        lines = [f"Checkpoint {self.path}: {len(self.tensors)} tensors, {_size(total)}, "
                 f"key layout {', '.join(repr(k) for k in layouts)}"]
        for component in ("decoder", "encoder", "other"):
            group = [t for t in self.tensors if t.component == component]
            if group:
                n_par = sum(t.kind == "param" for t in group)
                n_buf = sum(t.kind == "buffer" for t in group)
                lines.append(f"{component}: {n_par} parameters, {n_buf} buffers"
                             + (f", {len(group) - n_par - n_buf} unknown" if component == "other" else ""))
        width = max(len(t.key) for t in self.tensors)
        lines.append(f"  {'key':{width}} {'kind':7} {'shape':18} {'dtype':9} {'min':>10} {'max':>10} "
                     f"{'mean':>10} {'std':>10} nan/inf")
        for t in self.tensors:
            head = f"  {t.key:{width}} {t.kind:7} {str(t.shape):18} {t.dtype:9}"
            if t.stats is None:
                lines.append(f"{head} {t.skipped}")
            else:
                s = t.stats
                flag = f"{s['nan']}/{s['inf']}" + ("  <-- NON-FINITE" if s["nan"] or s["inf"] else "")
                lines.append(f"{head} {s['min']:10.4g} {s['max']:10.4g} {s['mean']:10.4g} {s['std']:10.4g} {flag}")
        if self.saved_config is None:
            lines.append("saved config: none (no etrm metadata or all_config.yaml beside the checkpoint): "
                         "recursion settings unverifiable")
        else:
            cfg = self.saved_config.model_config
            settings = ", ".join(f"{n} {getattr(cfg, n)}" for n in DECODER_SETTINGS)
            lines.append(f"saved config: {self.saved_config.source} ({self.saved_config.kind}): "
                         f"{cfg.model_type}, {settings}")
        if self.metadata is not None:
            lines.append(f"step: {self.metadata.step} (etrm {self.metadata.etrm_version})")
        rate = "" if self.metadata is None or self.metadata.ema_rate is None else f" (rate {self.metadata.ema_rate})"
        lines.append(f"EMA provenance: {self.ema_provenance}{rate} (from saved metadata/config only, "
                     "never from weight statistics)")
        return "\n".join(lines)


def inspect_checkpoint(path: str | Path, *, stats_all: bool = False) -> CheckpointInspection:
    """Keys, shapes, dtypes, parameter/buffer kinds, statistics and NaN/Inf counts of a
    checkpoint, with its saved config and EMA provenance. `puzzle_emb.*` tables are
    described by shape and dtype only (never read) unless `stats_all`."""
    path = Path(path)
    state = read_state_dict(path)
    infos = []
    for key, tensor in state.items():
        component, name, kind = classify_key(key)
        skip = None
        if name.startswith(PUZZLE_EMB_PREFIX) and not stats_all:
            skip = "not read (puzzle embedding table; --stats-all reads it)"
        elif tensor.is_complex():
            skip = "no statistics for complex tensors"
        infos.append(TensorInfo(key, component, kind, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."),
                                tensor.numel() * tensor.element_size(),
                                None if skip else tensor_stats(tensor), skip))
    return CheckpointInspection(path, tuple(infos), find_saved_config(path), read_metadata(path))


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


# --- command line -----------------------------------------------------------------------------

def add_parser(subparsers: argparse._SubParsersAction) -> None:
    inspect = subparsers.add_parser(
        "inspect", help="keys, shapes, statistics, NaN/Inf, saved config and EMA provenance of a checkpoint",
        description="Describe a checkpoint without running code from it. Exit status: 0, 1 when a tensor holds "
                    "NaN/Inf, 2 when the file cannot be read.")
    inspect.add_argument("checkpoint", type=Path, help="checkpoint file (e.g. step_518071)")
    inspect.add_argument("--stats-all", action="store_true", help="also read puzzle_emb.* tables for statistics")
    inspect.set_defaults(func=_inspect_command, error_status=2)  # 1 is a finding (NaN/Inf)

    verify = subparsers.add_parser(
        "verify-decoder", help="compare the decoder tensors of a TRM and an ETRM checkpoint",
        description="Per decoder tensor: equal, max and mean |difference|, parameters and buffers apart. "
                    "Exit status: 0 when every decoder parameter is equal, 1 when any differs, 2 on a read error.")
    verify.add_argument("--trm", required=True, type=Path, metavar="P", help="TRM checkpoint (the pretrained decoder)")
    verify.add_argument("--etrm", required=True, type=Path, metavar="P", help="ETRM checkpoint")
    verify.set_defaults(func=_verify_command, error_status=2)  # 1 is a finding (a decoder differs)


def _inspect_command(args: argparse.Namespace) -> int:
    result = inspect_checkpoint(args.checkpoint, stats_all=args.stats_all)  # errors: etrm.cli.main
    print(result.summary())
    return 1 if result.nonfinite_keys else 0


def _verify_command(args: argparse.Namespace) -> int:
    result = compare_decoders(args.trm, args.etrm)  # errors: etrm.cli.main
    print(result.summary())
    return 0 if result.all_params_equal else 1


__all__ = ["CheckpointError", "CheckpointInspection", "CheckpointMetadata", "ConfigMismatchError", "DecoderComparison",
           "DecoderLoadError", "DecoderLoadReport", "LegacyCheckpointWarning", "SavedConfig", "TensorDiff",
           "TensorInfo", "act_key", "act_model_of", "classify_key", "compare_decoders", "count_nonfinite",
           "decoder_tensors", "ema_provenance", "find_saved_config", "inspect_checkpoint", "key_layout",
           "load_checkpoint", "load_model", "load_pretrained_decoder", "normalize_key", "read_metadata",
           "read_state_dict", "recursion_mismatches", "save_checkpoint", "sidecar_path", "split_prefix",
           "tensor_stats", "unwrap_module"]
