"""Describing a checkpoint: keys, shapes, statistics, saved config, EMA provenance (`etrm inspect`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from etrm.checkpoints.layouts import PUZZLE_EMB_PREFIX, classify_key, key_layout
from etrm.checkpoints.metadata import CheckpointMetadata, SavedConfig, find_saved_config, read_metadata
from etrm.checkpoints.reading import _size, read_state_dict, tensor_stats
from etrm.config.importer import DECODER_SETTINGS


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
        lines = [
            f"Checkpoint {self.path}: {len(self.tensors)} tensors, {_size(total)}, "
            f"key layout {', '.join(repr(k) for k in layouts)}"
        ]
        for component in ("decoder", "encoder", "other"):
            group = [t for t in self.tensors if t.component == component]
            if group:
                n_par = sum(t.kind == "param" for t in group)
                n_buf = sum(t.kind == "buffer" for t in group)
                lines.append(
                    f"{component}: {n_par} parameters, {n_buf} buffers"
                    + (f", {len(group) - n_par - n_buf} unknown" if component == "other" else "")
                )
        width = max(len(t.key) for t in self.tensors)
        lines.append(
            f"  {'key':{width}} {'kind':7} {'shape':18} {'dtype':9} {'min':>10} {'max':>10} "
            f"{'mean':>10} {'std':>10} nan/inf"
        )
        for t in self.tensors:
            head = f"  {t.key:{width}} {t.kind:7} {str(t.shape):18} {t.dtype:9}"
            if t.stats is None:
                lines.append(f"{head} {t.skipped}")
            else:
                s = t.stats
                flag = f"{s['nan']}/{s['inf']}" + ("  <-- NON-FINITE" if s["nan"] or s["inf"] else "")
                lines.append(f"{head} {s['min']:10.4g} {s['max']:10.4g} {s['mean']:10.4g} {s['std']:10.4g} {flag}")
        if self.saved_config is None:
            lines.append(
                "saved config: none (no etrm metadata or all_config.yaml beside the checkpoint): "
                "recursion settings unverifiable"
            )
        else:
            cfg = self.saved_config.model_config
            settings = ", ".join(f"{n} {getattr(cfg, n)}" for n in DECODER_SETTINGS)
            lines.append(
                f"saved config: {self.saved_config.source} ({self.saved_config.kind}): {cfg.model_type}, {settings}"
            )
        if self.metadata is not None:
            lines.append(f"step: {self.metadata.step} (etrm {self.metadata.etrm_version})")
        rate = "" if self.metadata is None or self.metadata.ema_rate is None else f" (rate {self.metadata.ema_rate})"
        lines.append(
            f"EMA provenance: {self.ema_provenance}{rate} (from saved metadata/config only, "
            "never from weight statistics)"
        )
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
        infos.append(
            TensorInfo(
                key,
                component,
                kind,
                tuple(tensor.shape),
                str(tensor.dtype).removeprefix("torch."),
                tensor.numel() * tensor.element_size(),
                None if skip else tensor_stats(tensor),
                skip,
            )
        )
    return CheckpointInspection(path, tuple(infos), find_saved_config(path), read_metadata(path))
