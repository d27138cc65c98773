"""A researcher's own model code behind the adapter (`--model-code ROOT`).

SAFETY: this imports and runs the Python code under ROOT (its `models/` package), with
the rights of the process. Use it on code you would run yourself. Checkpoints are still
read with `weights_only=True`: loading weights never runs code.

The model is built the way the official TRM trainer (pretrain.py `create_model`) and the
origin ETRM trainer (pretrain_etrm.py `create_model_encoder`) build it, from the
`all_config.yaml` saved beside the checkpoint:

- ROOT, the folder holding `models/`, goes first on `sys.path` (a `models` package
  imported from elsewhere is forgotten first, so it cannot shadow ROOT's);
- model class from `arch.name`, loss head from `arch.loss.name`, both `module@Class`
  under `models.` (`recursive_reasoning.etrm@TRMWithEncoder` is class `TRMWithEncoder`
  of `models.recursive_reasoning.etrm`), as the trainers' `load_model_class` reads them;
- model config: the `arch` keys except `name` and `loss`, plus `batch_size`
  (global_batch_size over one process), `vocab_size`, `seq_len` and
  `num_puzzle_identifiers` from the dataset's `train/dataset.json`, and `causal: False`;
  the loss head gets the other `arch.loss` keys as keyword arguments;
- weights: the checkpoint's state dict with `_orig_mod.` / `module.` stripped, loaded
  strictly (every missing or unexpected key, every shape mismatch is an error naming it)
  with `assign=True` as the trainers load, so tensors keep their saved dtypes; on CPU
  unless a device is given. The model runs in the config's own `forward_dtype`.

Without a checkpoint (`build_model_at_size`, the CI gate of `etrm/suite/test_model_code.py`),
the config is an origin-style `config/arch/*.yaml` or an `all_config.yaml` at a CI size
(`etrm.config.arch`), `batch_size` is the largest batch the checks feed, and the weights
are the classes' own initialisation under a fixed seed.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from etrm.config.arch import ETRM, ORIGIN_MAX_DEMOS, ArchConfig, SizedArch
from etrm.config.importer import CONFIG_FILE
from etrm.interface import ENCODER_MODULE, TRMInterface, find_encoder

WORLD_SIZE = 1  # the checks run in one process: the trainer's per-rank batch_size is the global one
MODEL_PACKAGE = "models"
# The official and origin config classes' defaults for keys a saved config may lack.
ARCH_DEFAULTS = {"puzzle_emb_len": 16, "forward_dtype": "bfloat16"}


class ModelCodeError(ValueError):
    """The model code, its config or its checkpoint cannot be used; the message names what."""


@dataclass(frozen=True)
class ModelCode:
    """A model built from user code: the adapter over it, and what it was built from."""

    model: TRMInterface
    root: Path
    config_path: Path
    saved: dict[str, Any]  # the whole config file (for an arch file, its keys under "arch")
    config: dict[str, Any]  # what the model class was given
    checkpoint: Path | None = None
    max_demos: int = ORIGIN_MAX_DEMOS  # demo slots of its batches: the file's max_demos, or the CI size's
    shrunk: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # key -> (configured, used) at a CI size

    @property
    def seq_len(self) -> int:
        return int(self.config["seq_len"])


def build_model_code(
    root: str | Path, config_path: str | Path, data_dir: str | Path, *, encoder_module: str = ENCODER_MODULE
) -> ModelCode:
    """The model of a trainer's `all_config.yaml` built from the code under `root`, freshly initialised."""
    config_path = Path(config_path)
    saved = _read_config(config_path)
    if "global_batch_size" not in saved:
        raise ModelCodeError(f"{config_path}: no global_batch_size (the model's batch_size is derived from it)")
    return _build(
        root,
        config_path,
        saved,
        dict(saved["arch"]),
        data_dir,
        batch_size=saved["global_batch_size"] // WORLD_SIZE,
        max_demos=int(saved.get("max_demos", ORIGIN_MAX_DEMOS)),
        encoder_module=encoder_module,
    )


def build_model_at_size(
    root: str | Path,
    config: ArchConfig,
    sized: SizedArch,
    data_dir: str | Path,
    *,
    batch_size: int,
    encoder_module: str = ENCODER_MODULE,
    seed: int = 0,
) -> ModelCode:
    """The model of a config/arch file or an all_config.yaml (`etrm.config.arch`) at a CI size, built from the
    code under `root` with a random initialisation (seeded), for the checks that need no trained weights.
    `batch_size`: the largest batch the checks feed (the trainers pass the per-rank batch size)."""
    if config.kind == ETRM:
        raise ModelCodeError(
            f"{config.path}: an etrm ModelConfig names no model class of yours; give your "
            "config/arch/*.yaml or a trainer's all_config.yaml"
        )
    torch.manual_seed(seed)
    code = _build(
        root,
        config.path,
        {**config.top, "arch": config.arch},
        dict(sized.arch),
        data_dir,
        batch_size=batch_size,
        max_demos=sized.max_demos,
        encoder_module=encoder_module,
    )
    return dataclasses.replace(code, shrunk=dict(sized.shrunk))


def _build(
    root: str | Path,
    config_path: Path,
    saved: dict[str, Any],
    arch: dict[str, Any],
    data_dir: str | Path,
    *,
    batch_size: int,
    max_demos: int,
    encoder_module: str,
) -> ModelCode:
    from etrm.data.layout import DatasetFormatError, load_metadata

    root = Path(root).resolve()
    if not (root / MODEL_PACKAGE).is_dir():
        raise ModelCodeError(
            f"model code root {root}: no {MODEL_PACKAGE}/ folder there (give the repository root that holds it)"
        )
    arch_name, loss = arch.pop("name", None), arch.pop("loss", None)
    if not isinstance(loss, dict) or "name" not in loss:
        raise ModelCodeError(f"{config_path}: arch.loss must be a mapping with a name (e.g. losses@ACTLossHead)")
    loss_kwargs = {k: v for k, v in loss.items() if k != "name"}
    try:
        meta = load_metadata(data_dir, "train")
    except DatasetFormatError as err:
        raise ModelCodeError(f"dataset for the model's config: {err}") from None
    derived = dict(
        batch_size=batch_size,
        vocab_size=meta.vocab_size,
        seq_len=meta.seq_len,
        num_puzzle_identifiers=meta.num_puzzle_identifiers,
        causal=False,
    )
    clash = sorted(set(arch) & set(derived))
    if clash:
        raise ModelCodeError(f"{config_path}: arch sets {clash}, which the trainer derives from the dataset")
    config = {**arch, **derived}

    _put_first_on_path(root)
    model_cls = _load_class(root, config_path, "arch.name", arch_name)
    loss_cls = _load_class(root, config_path, "arch.loss.name", loss["name"])
    try:
        with torch.device("cpu"):
            head = loss_cls(model_cls(config), **loss_kwargs)
    except Exception as err:  # the user's constructor: report which one and why, as an error
        raise ModelCodeError(
            f"building {loss['name']}({arch_name}) from {root} with {config_path}: {type(err).__name__}: {err}"
        ) from err
    return ModelCode(
        _interface(head, arch, arch_name, root, encoder_module), root, config_path, saved, config, max_demos=max_demos
    )


def load_model_code(
    root: str | Path,
    checkpoint: str | Path,
    data_dir: str | Path,
    *,
    encoder_module: str = ENCODER_MODULE,
    device: str = "cpu",
) -> ModelCode:
    """The model of the checkpoint's `all_config.yaml` from the code under `root`, with the
    checkpoint's weights loaded strictly."""
    from etrm.checkpoints import CheckpointError, normalize_key, read_state_dict

    checkpoint = Path(checkpoint)
    code = build_model_code(root, checkpoint.parent / CONFIG_FILE, data_dir, encoder_module=encoder_module)
    try:
        saved = read_state_dict(checkpoint)
    except CheckpointError as err:
        raise ModelCodeError(str(err)) from None
    state: dict[str, torch.Tensor] = {}
    for key, tensor in saved.items():
        name = normalize_key(key)
        if name in state:
            raise ModelCodeError(
                f"{checkpoint}: keys {key!r} and another one both name {name!r} once prefixes are stripped"
            )
        state[name] = tensor.clone()  # off the memory map: checks perturb weights in place
    head = code.model.head
    if problems := fit_problems(head.state_dict(), state):
        raise ModelCodeError(f"{checkpoint} does not fit {code.model.name}: {problems}")
    head.load_state_dict(state, strict=True, assign=True)
    head.to(device)
    return dataclasses.replace(code, checkpoint=checkpoint)


def fit_problems(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """What keeps `given` from loading strictly into `expected` (missing keys, unexpected ones,
    shape mismatches, each counted and the first four named), or "" when it loads."""
    missing, unexpected = sorted(set(expected) - set(given)), sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if expected[k].shape != given[k].shape)
    return "; ".join(
        f"{what} {len(keys)}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", wrong))
        if keys
    )


def _read_config(path: Path) -> dict[str, Any]:
    from etrm.config import ConfigError
    from etrm.config.importer import _read_yaml

    try:
        saved = _read_yaml(path)
    except ConfigError as err:
        raise ModelCodeError(
            f"{err} (the model is built from the all_config.yaml the trainer saves beside its checkpoints)"
        ) from None
    if not isinstance(saved.get("arch"), dict):
        raise ModelCodeError(f"{path}: no 'arch' mapping (the model settings, arch.name and arch.loss)")
    return saved


def _put_first_on_path(root: Path) -> None:
    entry = str(root)
    if entry in sys.path:
        sys.path.remove(entry)
    sys.path.insert(0, entry)
    for name in [m for m in sys.modules if m == MODEL_PACKAGE or m.startswith(MODEL_PACKAGE + ".")]:
        origin = getattr(sys.modules[name], "__file__", None)
        if origin is None or not Path(origin).resolve().is_relative_to(root):
            del sys.modules[name]
    importlib.invalidate_caches()


def _load_class(root: Path, config_path: Path, key: str, identifier: Any) -> type:
    module_path, _, class_name = str(identifier).partition("@")
    if not isinstance(identifier, str) or not module_path or not class_name:
        raise ModelCodeError(f"{config_path}: {key} {identifier!r} is not 'module@Class'")
    module_name = f"{MODEL_PACKAGE}.{module_path}"
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # any failure of the user's import is an error naming it
        raise ModelCodeError(
            f"{config_path}: {key} {identifier!r}: importing {module_name} from {root} failed: "
            f"{type(err).__name__}: {err}"
        ) from err
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ModelCodeError(
            f"{config_path}: {key} {identifier!r}: {module_name} ({module.__file__}) has no class {class_name}"
        )
    return cls


def _interface(
    head: torch.nn.Module, arch: dict[str, Any], arch_name: str, root: Path, encoder_module: str
) -> TRMInterface:
    values = {**ARCH_DEFAULTS, **arch}
    if not isinstance(values.get("halt_max_steps"), int):
        raise ModelCodeError(f"arch of {arch_name}: no integer halt_max_steps (the checks step the model that often)")
    hidden = values.get("hidden_size")
    puzzle_emb_len = values["puzzle_emb_len"]
    if puzzle_emb_len == 0 and hidden:  # the official rule: ceil(puzzle_emb_ndim / hidden_size) tokens
        puzzle_emb_len = -(values.get("puzzle_emb_ndim", 0) // -hidden)
    found = find_encoder(head, encoder_module)
    return TRMInterface(
        head,
        halt_max_steps=values["halt_max_steps"],
        encoder=found[1] if found else None,
        puzzle_emb_len=puzzle_emb_len,
        hidden_size=hidden,
        forward_dtype=values["forward_dtype"],
        halt_exploration_prob=values.get("halt_exploration_prob"),
        name=f"{arch_name.split('@')[-1]} ({root})",
        encoder_name=encoder_module,
    )
