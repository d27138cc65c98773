"""A model's architecture from a repository's own config files, at a CI size (`--model-config`).

`--model-config` names one file or a folder of them (one case per `*.yaml`/`*.yml`).
A file is one of three kinds, told apart by its keys:

- "arch": an origin ETRM / official TRM `config/arch/*.yaml`: the model class `name`, the
  loss head `loss` and the model keys at the top (hydra puts this file under `arch:`);
- "trainer": a trainer's `all_config.yaml`: the same keys nested under `arch:`, training
  keys (`global_batch_size`, `max_demos`, ...) at the top;
- "etrm": etrm's own `ModelConfig` file (`model_type`, ...), for a checkpoint saved without
  a config; it names no model class of the user's, so it cannot build their code.

`at_size` shrinks what only sets the cost, and keeps every setting that changes the
computation's structure as configured (H_cycles, L_cycles, encoder type, pooling,
normalisation style, halting, puzzle_emb_len, forward_dtype):

| size | hidden_size | num_heads | every `*layers` key | canvas | max_demos |
|---|---|---|---|---|---|
| tiny (default) | 32 | 2 | 1 | 10 | 4 |
| mid | 128 | 4 | 2 | 30 | 6 |
| as-configured | as configured | as configured | as configured | 30 | as configured (10) |

A value already below the size's is kept. A numeric `puzzle_emb_ndim` scales with the
hidden size; a hydra reference (`puzzle_emb_ndim: ${.hidden_size}`) is resolved after
shrinking, so it follows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from etrm.config import ConfigError
from etrm.config.importer import _read_yaml, _resolve_interpolations

CONFIG_SUFFIXES = (".yaml", ".yml")
ARCH, TRAINER, ETRM = "arch", "trainer", "etrm"
TINY, MID, AS_CONFIGURED = "tiny", "mid", "as-configured"
MODEL_SIZES = (TINY, MID, AS_CONFIGURED)
ARC_CANVAS = 30  # ARC-AGI grids are at most 30x30
ORIGIN_MAX_DEMOS = 10  # the origin trainer's default when a file does not say
LAYER_KEY_SUFFIX = "layers"  # L_layers, H_layers, encoder_num_layers, encoder_set_layers, encoder_l_layers


@dataclass(frozen=True)
class ModelSize:
    hidden_size: int
    num_heads: int
    layers: int
    canvas: int
    max_demos: int


SIZES = {
    TINY: ModelSize(hidden_size=32, num_heads=2, layers=1, canvas=10, max_demos=4),
    MID: ModelSize(hidden_size=128, num_heads=4, layers=2, canvas=30, max_demos=6),
}


@dataclass(frozen=True)
class ArchConfig:
    """One config file: its kind, its arch mapping (name, loss, model keys) and its top-level
    training keys (empty for an arch file)."""

    path: Path
    kind: str
    arch: dict[str, Any]
    top: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str | None:
        return self.arch.get("name")

    @property
    def max_demos(self) -> int:
        return int(self.top.get("max_demos", ORIGIN_MAX_DEMOS))


@dataclass(frozen=True)
class SizedArch:
    """An arch mapping at a size: what the model class gets (before the data-derived keys),
    the canvas and demo slots of its batches, and what was shrunk (key -> (configured, used))."""

    arch: dict[str, Any]
    canvas: int
    max_demos: int
    shrunk: dict[str, tuple[Any, Any]]


def config_files(path: str | Path) -> list[Path]:
    """The config files `--model-config` names: the file itself, or a folder's `*.yaml`/`*.yml`
    (not recursive), sorted by name."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in CONFIG_SUFFIXES)
        if not found:
            raise ConfigError(f"{path}: no {'/'.join('*' + s for s in CONFIG_SUFFIXES)} config files in this folder")
        return found
    return [path]


def read_arch_config(path: str | Path) -> ArchConfig:
    """Read one config file and tell its kind (module docstring); an error names the file."""
    path = Path(path)
    doc = _read_yaml(path)
    if isinstance(doc.get("arch"), dict):
        return ArchConfig(path, TRAINER, dict(doc["arch"]), {k: v for k, v in doc.items() if k != "arch"})
    if "name" in doc or "loss" in doc:
        return ArchConfig(path, ARCH, dict(doc))
    if "model_type" in doc:
        return ArchConfig(path, ETRM, dict(doc))
    raise ConfigError(
        f"{path}: neither a config/arch file (name, loss, model keys), nor a trainer's all_config.yaml "
        "(an arch: mapping), nor an etrm ModelConfig (model_type)"
    )


def names_model_class(path: str | Path) -> bool:
    """Whether `path` is a file that names the user's model class (an arch or trainer file), not an
    etrm ModelConfig; a folder always holds such files."""
    path = Path(path)
    if path.is_dir():
        return True
    try:
        return read_arch_config(path).kind in (ARCH, TRAINER)
    except ConfigError:
        return False


def at_size(config: ArchConfig, size: str) -> SizedArch:
    """`config.arch` at `size` (module docstring), interpolations resolved."""
    if size not in MODEL_SIZES:
        raise ConfigError(f"unknown model size {size!r}; choose one of {', '.join(MODEL_SIZES)}")
    arch = dict(config.arch)
    if size == AS_CONFIGURED:
        return SizedArch(_resolve_interpolations(config.path, arch), ARC_CANVAS, config.max_demos, {})
    target = SIZES[size]
    wanted = {"hidden_size": target.hidden_size, "num_heads": target.num_heads}
    wanted.update({k: target.layers for k in arch if k.endswith(LAYER_KEY_SUFFIX)})
    shrunk: dict[str, tuple[Any, Any]] = {}
    for key, limit in wanted.items():
        value = arch.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            arch[key], shrunk[key] = limit, (value, limit)
    hidden = shrunk.get("hidden_size")
    ndim = arch.get("puzzle_emb_ndim")
    if hidden and isinstance(ndim, int) and not isinstance(ndim, bool) and ndim > 0:
        arch["puzzle_emb_ndim"] = ndim * hidden[1] // hidden[0]
        shrunk["puzzle_emb_ndim"] = (ndim, arch["puzzle_emb_ndim"])
    arch = _resolve_interpolations(config.path, arch)
    hidden_size, heads = arch.get("hidden_size"), arch.get("num_heads")
    if isinstance(hidden_size, int) and isinstance(heads, int) and heads > 0 and hidden_size % heads:
        raise ConfigError(
            f"{config.path}: at size {size}, hidden_size {hidden_size} is not divisible by num_heads "
            f"{heads}; use --model-size as-configured"
        )
    max_demos = min(config.max_demos, target.max_demos)
    if max_demos < config.max_demos:
        shrunk["max_demos"] = (config.max_demos, max_demos)
    return SizedArch(arch, target.canvas, max_demos, shrunk)
