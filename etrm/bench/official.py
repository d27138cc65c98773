"""The official TRM decoder, imported from a checkout of SamsungSAILMontreal/TinyRecursiveModels.

etrm does not ship that code: `etrm bench recursion --against-official DIR` and the benchmark
test's $ETRM_OFFICIAL_TRM name a checkout, whose own requirements (pydantic, einops) are the
user's to install. Its inner model (`TinyRecursiveReasoningModel_ACTV1_Inner`) is built from
our ModelConfig and loads our decoder's state dict strictly: the module names are the same
(etrm.models.trm), so both sides compute with the same weights, and `check_same_computation`
shows that they do before anything is timed.
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from pathlib import Path

import torch
from torch import nn

from etrm.config import ModelConfig

OFFICIAL_ENV = "ETRM_OFFICIAL_TRM"  # where the benchmark tests look for the checkout
OFFICIAL_MODULE = "models.recursive_reasoning.trm"
OFFICIAL_FILE = Path("models", "recursive_reasoning", "trm.py")
INNER_CLASS = "TinyRecursiveReasoningModel_ACTV1_Inner"
CONFIG_CLASS = "TinyRecursiveReasoningModel_ACTV1Config"
# Norm-wise logit difference allowed between ours and theirs: 30 layer applications of rounding.
ROUNDING = {"float32": 1e-3, "bfloat16": 0.05}


class OfficialCodeError(ValueError):
    """The checkout cannot be imported or does not compute what ours does; the message says why."""


def import_official(root: str | Path) -> tuple[type, type]:
    """The official inner model class and its config class from the checkout at `root`."""
    root = Path(root).expanduser().resolve()
    if not (root / OFFICIAL_FILE).is_file():
        raise OfficialCodeError(
            f"{root}: no {OFFICIAL_FILE.as_posix()} there (give a checkout of SamsungSAILMontreal/TinyRecursiveModels)"
        )
    for name in [m for m in sys.modules if m == "models" or m.startswith("models.")]:
        del sys.modules[name]  # another `models` package (a researcher's model code) must not answer
    # The checkout's models/ has no __init__.py: a namespace package, which a regular `models`
    # package later on sys.path (the researcher's root) would win over. Only the checkout's is seen.
    saved_path = list(sys.path)
    sys.path[:] = [str(root), *(p for p in sys.path if not (Path(p or ".") / "models").is_dir())]
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(OFFICIAL_MODULE)
    except ImportError as err:
        raise OfficialCodeError(
            f"the official code at {root} does not import here: {err} (its requirements, pydantic and einops, "
            "are yours to install)"
        ) from err
    finally:
        sys.path[:] = saved_path
    try:
        return getattr(module, INNER_CLASS), getattr(module, CONFIG_CLASS)
    except AttributeError as err:
        raise OfficialCodeError(f"{root / OFFICIAL_FILE}: {err}") from None


def official_decoder(
    classes: tuple[type, type], config: ModelConfig, batch_size: int, state_dict: dict[str, torch.Tensor]
) -> nn.Module:
    """The official inner model for `config`, with `state_dict` (our decoder's) loaded strictly."""
    inner_cls, config_cls = classes
    theirs = inner_cls(config_cls(**dataclasses.asdict(config), batch_size=batch_size, H_layers=0))
    try:
        theirs.load_state_dict(state_dict)
    except RuntimeError as err:
        raise OfficialCodeError(f"our decoder's weights do not load into {inner_cls.__name__}: {err}") from None
    return theirs


def check_same_computation(ours: torch.Tensor, theirs: torch.Tensor, dtype: str, what: str = "official") -> None:
    """Both steps' logits agree to `dtype`'s rounding, so timing them compares the same work."""
    ours, theirs = ours.float(), theirs.float()
    if ours.shape != theirs.shape:
        raise OfficialCodeError(f"our step's logits are {tuple(ours.shape)}, the {what} step's {tuple(theirs.shape)}")
    difference = ((ours - theirs).norm() / theirs.norm().clamp_min(1e-30)).item()
    if not difference <= ROUNDING[dtype]:
        raise OfficialCodeError(
            f"our step and the {what} step differ by {difference:.3g} (norm-wise, relative; {dtype} rounding "
            f"allows {ROUNDING[dtype]}): they do not compute the same thing"
        )
