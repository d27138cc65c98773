"""Loading a pretrained TRM (or ETRM) decoder into an ETRM model, with a report of what loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from etrm.checkpoints.errors import CheckpointError, ConfigMismatchError
from etrm.checkpoints.layouts import PUZZLE_EMB_PREFIX, classify_key, key_layout, unwrap_module
from etrm.checkpoints.metadata import _mismatch_message, find_saved_config, recursion_mismatches
from etrm.checkpoints.reading import count_nonfinite, read_state_dict
from etrm.config.importer import DECODER_SETTINGS
from etrm.models import LossHead


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
            out.append(
                f"decoder tensors missing from the checkpoint: {list(self.missing_params + self.missing_buffers)}"
                f" (key layouts found: {list(self.key_layouts)})"
            )
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
        lines = [
            f"Pretrained decoder from {self.path} (key layout {', '.join(repr(k) for k in self.key_layouts)}):",
            f"  parameters: {len(self.loaded_params)}/{n_params} loaded",
            f"  buffers:    {len(self.loaded_buffers)}/{n_buffers} loaded ({', '.join(self.loaded_buffers) or '-'}; "
            "buffers are never trained, so they are counted apart)",
        ]
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
            lines.append(
                f"  config:     UNVERIFIED: no all_config.yaml or etrm metadata beside the checkpoint, so "
                f"{', '.join(self.settings)} cannot be checked (L_cycles 4 vs 6 changes no tensor shape); "
                f"model has {values}"
            )
        else:
            lines.append(f"  config:     MISMATCH with {self.config_source}")
        lines += [f"  problem:    {p}" for p in self.problems()]
        return "\n".join(lines)


class DecoderLoadError(CheckpointError):
    """Decoder tensors that did not load; `.report` has the full DecoderLoadReport."""

    def __init__(self, message: str, report: DecoderLoadReport):
        super().__init__(message)
        self.report = report


def act_model_of(model: nn.Module) -> nn.Module:
    """The ACT model inside a LossHead and any compile/DDP wrappers."""
    model = unwrap_module(model)
    return unwrap_module(model.model) if isinstance(model, LossHead) else model


def load_pretrained_decoder(
    model: nn.Module,
    path: str | Path,
    *,
    map_location: str | torch.device = "cpu",
    config_path: str | Path | None = None,
    allow_legacy: bool = True,
) -> DecoderLoadReport:
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
        raise TypeError(
            f"load_pretrained_decoder loads into ETRM/ETRMTRM, got {type(act).__name__}; "
            "load a whole TRM with load_model"
        )
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
    casts = {
        n: (str(t.dtype).removeprefix("torch."), str(targets[n].dtype).removeprefix("torch."))
        for n, t in staged.items()
        if t.dtype != targets[n].dtype
    }

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
        path=path,
        key_layouts=tuple(layouts),
        loaded_params=tuple(n for n in targets if n in staged and n in param_names),
        loaded_buffers=tuple(n for n in targets if n in staged and n not in param_names),
        skipped=skipped,
        missing_params=tuple(n for n in targets if n not in found and n in param_names),
        missing_buffers=tuple(n for n in targets if n not in found and n not in param_names),
        unexpected=tuple(unexpected),
        duplicates=tuple(duplicates),
        shape_mismatches=shapes,
        nonfinite=nonfinite,
        dtype_casts=casts,
        config_status=status,
        config_source=source,
        settings=settings,
    )
    if status == "mismatch":
        raise ConfigMismatchError(_mismatch_message(path, saved, report.config_mismatches))
    problems = report.problems()
    if problems:
        raise DecoderLoadError(f"{path}: the pretrained decoder did not load: " + "; ".join(problems), report)
    with torch.no_grad():
        for name, tensor in staged.items():
            targets[name].copy_(tensor)
    return report
