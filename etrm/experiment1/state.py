"""Experiment 1's checkpoints: weights a researcher can audit, and the state a run resumes from.

At each checkpoint step N, rank 0 writes into the run's folder:

- `step_N`: the model's state dict in the official trainer's layout (`_orig_mod.model.*`
  keys) with `all_config.yaml` beside it (and etrm's `step_N.etrm.json`), so `etrm
  investigate --etrm-checkpoint OUT/step_N` audits the run itself; for a user's model
  (`--model-code`) the config it was built from is copied as `all_config.yaml`;
- `resume.pt`: one dict, as nanoGPT's `ckpt.pt` - the model, every optimizer's state, the
  step, the run settings, the data position (sampler iteration and batches taken in it),
  the ACT carry and the torch RNG state of every rank - replaced atomically, so a run
  killed at any moment resumes from the last complete checkpoint.

`--resume` reads `resume.pt`, cuts the metrics log back to the checkpoint's step (the
lines a killed run wrote after it are redone), and continues; an uninterrupted run and a
stopped-and-resumed one then write the same log.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from etrm.config import ConfigError

RESUME_FILE = "resume.pt"


def checkpoint_name(step: int) -> str:
    return f"step_{step}"


def portable(value: Any) -> Any:
    """`value` with tensors on the CPU and dataclasses (an ACT carry) as tagged dicts, so
    `torch.load(weights_only=True)` reads it back and any device can continue it."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            "__dataclass__": f"{type(value).__module__}:{type(value).__qualname__}",
            **{f.name: portable(getattr(value, f.name)) for f in dataclasses.fields(value)},
        }
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(v) for v in value)
    return value


def restore(value: Any, device: torch.device) -> Any:
    """The inverse of `portable`, with tensors moved to `device` (RNG states stay on the CPU)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict) and "__dataclass__" in value:
        import importlib

        module, _, name = value["__dataclass__"].partition(":")
        cls: Any = importlib.import_module(module)
        for part in name.split("."):
            cls = getattr(cls, part)
        return cls(**{k: restore(v, device) for k, v in value.items() if k != "__dataclass__"})
    if isinstance(value, dict):
        return {k: restore(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(restore(v, device) for v in value)
    return value


def rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def save_weights(
    folder: Path,
    step: int,
    head: torch.nn.Module,
    *,
    model_config=None,
    training: dict | None = None,
    config_file: Path | None = None,
) -> Path:
    """`folder/step_N` in the official layout with `all_config.yaml` beside it: etrm's
    writer for etrm's models, else the state dict under `_orig_mod.` and `config_file` copied."""
    from etrm.checkpoints import save_checkpoint
    from etrm.checkpoints.layouts import unwrap_module

    path = folder / checkpoint_name(step)
    if model_config is not None:
        return save_checkpoint(path, head, step=step, training_config=training)
    state = {"_orig_mod." + k: v.detach().cpu() for k, v in unwrap_module(head).state_dict().items()}
    _atomic(path, lambda tmp: torch.save(state, tmp))
    if config_file is not None and not (folder / "all_config.yaml").is_file():
        shutil.copyfile(config_file, folder / "all_config.yaml")
    return path


def write_composed(folder: Path, doc: dict[str, Any], processes) -> Path:
    """The composed config as `folder/all_config.yaml` (rank 0 writes, every rank waits for
    it): a user's model is built from it, and its checkpoints are audited with it."""
    import yaml

    from etrm.experiment1.distributed import from_master

    path = folder / "all_config.yaml"
    if processes.master:
        folder.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(doc, sort_keys=True)
        if path.is_file() and path.read_text() != text:
            raise ConfigError(f"{path} describes another run; choose another --out")
        _atomic(path, lambda tmp: tmp.write_text(text))
    from_master(None, processes)
    return path


def save_resume_state(folder: Path, state: dict[str, Any]) -> Path:
    path = folder / RESUME_FILE
    _atomic(path, lambda tmp: torch.save(portable(state), tmp))
    return path


def load_resume_state(folder: Path, device: torch.device) -> dict[str, Any]:
    path = folder / RESUME_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no checkpoint to resume from (--resume continues a run that wrote one; "
            "checkpoints are written every --checkpoint-every steps and at the end)"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or foreign file
        raise ConfigError(f"{path}: not a resumable etrm experiment1 checkpoint: {type(err).__name__}: {err}") from None
    state["carry"] = restore(state.get("carry"), device)
    return state


def check_same_run(path: Path, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A resumed run must be the run that was checkpointed: the same `current` settings."""
    differ = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if differ:
        described = ", ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in sorted(differ.items()))
        raise ConfigError(f"{path}: --resume of a different run ({described}); resume with the same settings")


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)
