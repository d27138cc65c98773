"""Our recursion step beside the official TRM code's and a researcher's model, against the kernel floor.

One row per size and mode: "eager", or "compiled" (torch.compile on every side, as the official
and the origin ETRM trainers run their models). The sides are timed interleaved in one run
(etrm.bench.timing.alternate), after a first call that compiles (in compiled mode) and shows that
ours and the official code compute the same logits:

- ours: our decoder's inference recursion step (`TRMDecoder.forward`: H_cycles x (L_cycles + 1)
  calls of the block stack, lm_head and q_head) on a fresh carry; the TRM puzzle prefix is in the
  time, an encoder model's context is computed once before it;
- official: the official inner model's forward on the same carry and batch with the same weights
  (etrm.bench.official);
- user: one inference ACT step of the researcher's model built from their code (`--model-code`,
  as `etrm investigate` builds it, etrm.model_code) at the benchmark's sizes: its ACT wrapper and
  loss head are in the time, as the adapter's protocol calls it;
- floor: the step's kernel floor (etrm.bench.timing.kernel_floor_step: every block's projections
  and attention alone, in sequence) in the row's dtype, eager in both modes, timed interleaved with
  the sides like one more of them: the least time any implementation on the same kernels can take.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from etrm.bench.official import check_same_computation, import_official, official_decoder
from etrm.bench.timing import (
    BenchSize,
    alternate,
    get_size,
    inference_step,
    kernel_floor_step,
    make_batch,
    make_head,
    median_ms,
    onednn_linear_in_use,
    step_flops,
    training_step,
)
from etrm.bfloat16 import bfloat16_products_emulated
from etrm.config import ModelConfig
from etrm.models import LossHead

MODES = ("eager", "compiled")
# The benchmark size's settings a researcher's arch takes, so that their row times the same shapes.
SIZE_ARCH_KEYS = ("hidden_size", "num_heads", "H_cycles", "L_cycles", "L_layers", "expansion", "puzzle_emb_len")


@dataclass(frozen=True)
class UserModel:
    """A researcher's model: the code root (holding `models/`) and its config/arch or all_config.yaml."""

    root: Path
    config: Path


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's CPU backend needs ($CXX, else c++, g++ or clang++ on PATH)."""
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        found = shutil.which(name) if name else None
        if found:
            return found
    return None


def decoder_step(head: LossHead, batch: dict[str, torch.Tensor], compiled: bool = False) -> Callable[[], torch.Tensor]:
    """Our decoder's inference recursion step on a fresh carry, returning the logits."""
    model = head.model.eval()
    inner = model.inner
    size, device = batch["inputs"].shape[0], batch["inputs"].device
    reset = torch.ones(size, dtype=torch.bool, device=device)
    carry = inner.reset_carry(reset, inner.empty_carry(size, device))
    if model.config.model_type == "trm":
        prefix = lambda: inner.puzzle_prefix(batch["puzzle_identifiers"])  # noqa: E731
    else:  # the encoder is not the decoder's work: its context is formed once
        with torch.no_grad():
            context = model.prefix(batch, model.initial_carry(batch), reset)[0]
        prefix = lambda: context  # noqa: E731
    forward = torch.compile(inner) if compiled else inner

    def step() -> torch.Tensor:
        with torch.no_grad():
            return forward(carry, batch["inputs"], prefix())[1]

    return step


def official_step(
    classes: tuple[type, type], head: LossHead, batch: dict[str, torch.Tensor], compiled: bool = False
) -> Callable[[], torch.Tensor]:
    """The official inner model's forward with our decoder's weights, on the carry `decoder_step` uses."""
    inner = head.model.inner
    size, device = batch["inputs"].shape[0], batch["inputs"].device
    theirs = official_decoder(classes, head.config, size, inner.state_dict()).to(device).eval()
    carry = inner.reset_carry(torch.ones(size, dtype=torch.bool, device=device), inner.empty_carry(size, device))
    forward = torch.compile(theirs) if compiled else theirs

    def step() -> torch.Tensor:
        with torch.no_grad():
            return forward(carry, batch)[1]

    return step


def user_arch(arch: dict[str, Any], config: ModelConfig) -> tuple[dict[str, Any], dict[str, tuple[Any, Any]]]:
    """The researcher's arch keys at the benchmark size (SIZE_ARCH_KEYS and forward_dtype from
    `config`; a puzzle vector fills one prefix token, as in the benchmark's TRM), and what changed."""
    arch, changed = dict(arch), {}
    wanted = {key: getattr(config, key) for key in (*SIZE_ARCH_KEYS, "forward_dtype")}
    ndim = arch.get("puzzle_emb_ndim")
    if isinstance(ndim, int) and not isinstance(ndim, bool) and ndim > 0:  # "${.hidden_size}" follows by itself
        wanted["puzzle_emb_ndim"] = config.hidden_size
    for key, value in wanted.items():
        if arch.get(key) != value:
            changed[key] = (arch.get(key), value)
            arch[key] = value
    return arch, changed


def user_step(
    user: UserModel,
    size: BenchSize,
    config: ModelConfig,
    device: torch.device,
    compiled: bool = False,
    seed: int = 0,
) -> tuple[Callable[[], None], dict[str, Any]]:
    """One inference ACT step per call of the researcher's model at the benchmark size (the carry
    persists across calls, as in evaluation), and what was built: its name, config and the keys set."""
    from etrm.config.arch import AS_CONFIGURED, ETRM, at_size, read_arch_config
    from etrm.errors import UsageError
    from etrm.model_code import build_model_at_size

    arch_config = read_arch_config(user.config)
    if arch_config.kind == ETRM:
        raise UsageError(
            f"--model-config {user.config}: an etrm ModelConfig names no model class of yours; give your "
            "config/arch/*.yaml or a trainer's all_config.yaml"
        )
    arch, changed = user_arch(arch_config.arch, config)
    arch_config = dataclasses.replace(arch_config, arch=arch)
    sized = at_size(arch_config, AS_CONFIGURED)  # resolves interpolations after the size's keys are set
    with tempfile.TemporaryDirectory(prefix="etrm-bench-") as data_dir:
        _write_dataset_json(Path(data_dir), config)
        code = build_model_at_size(user.root, arch_config, sized, data_dir, batch_size=size.batch, seed=seed)
    model, head = code.model, code.model.head.to(device).eval()
    batch_config = config
    if model.has_encoder:
        batch_config = dataclasses.replace(config, model_type="etrm", puzzle_emb_ndim=0, max_demos=code.max_demos)
    batch = make_batch(size, batch_config, device, seed)  # same queries as ours: one generator, inputs first
    forward = torch.compile(head) if compiled else head
    products = nullcontext if model.is_etrm else bfloat16_products_emulated  # as TRMInterface.step runs it
    state = {"carry": model.initial_carry(batch)}

    def step() -> None:
        with torch.no_grad(), products():
            state["carry"] = forward(carry=state["carry"], batch=batch, return_keys=[])[0]

    info = {"name": model.name, "config": str(user.config), "set": {k: list(v) for k, v in changed.items()}}
    return step, info


def _write_dataset_json(folder: Path, config: ModelConfig) -> None:
    """The metadata the trainers derive vocab_size, seq_len and num_puzzle_identifiers from: the
    benchmark's synthetic batch's."""
    meta = dict(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=config.vocab_size,
        seq_len=config.seq_len,
        num_puzzle_identifiers=config.num_puzzle_identifiers,
        total_groups=1,
        mean_puzzle_examples=1.0,
        total_puzzles=1,
        sets=["all"],
    )
    (folder / "train").mkdir()
    (folder / "train" / "dataset.json").write_text(json.dumps(meta))


def compare(
    size: str | BenchSize = "tiny",
    *,
    model: str = "trm",
    dtype: str | None = None,
    device: str | torch.device = "cpu",
    repeat: int = 5,
    warmup: int = 1,
    compiled: bool = False,
    official: tuple[type, type] | str | Path | None = None,
    user: UserModel | None = None,
    act_steps: bool = True,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """One row: the median ms of each side run (None for a side not run), the kernel floor and
    the ratios; in eager mode with `act_steps` also our full inference and training ACT steps.
    `official`: the checkout's folder or `import_official`'s classes."""
    size, device = get_size(size), torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but CUDA is not available on this machine")
    config = size.config(model)
    if dtype is not None:
        config = config.replace(forward_dtype=dtype)
    head = make_head(config, device, seed)
    batch = make_batch(size, config, device, seed)
    # Each side's first call (the compiling one; not timed) comes right after it is built: the
    # official code and the researcher's both live in a package named `models`, and torch.compile
    # resolves a module's globals through sys.modules while it traces.
    calls: dict[str, Callable[[], object]] = {"ours": decoder_step(head, batch, compiled)}
    ours_logits = calls["ours"]()
    if official is not None:
        classes = official if isinstance(official, tuple) else import_official(official)
        calls["official"] = official_step(classes, head, batch, compiled)
        check_same_computation(ours_logits, calls["official"](), config.forward_dtype)
    user_info = None
    if user is not None:
        calls["user"], user_info = user_step(user, size, config, device, compiled, seed)
        calls["user"]()
    calls["floor"] = kernel_floor_step(config, size.batch, device)
    mode = MODES[compiled]
    desc = f"{size.name} {mode} {config.forward_dtype}"
    times = alternate(calls, repeat, warmup=warmup, device=device, progress=progress, desc=desc)
    ms = {name: median_ms(times[name]) if name in times else None for name in ("ours", "official", "user")}
    floor = median_ms(times["floor"])
    act = {"infer": None, "train": None}
    if act_steps and not compiled:
        steps = {"infer": inference_step(head, batch), "train": training_step(head, batch)}
        act = {k: median_ms(v) for k, v in alternate(steps, repeat, warmup=warmup, device=device).items()}
    flops = step_flops(config, size.batch)
    return {
        "size": size.name,
        "mode": mode,
        "model": model,
        "dtype": config.forward_dtype,
        "device": str(device),
        "batch": size.batch,
        "threads": torch.get_num_threads(),
        "repeat": repeat,
        "onednn_linear": onednn_linear_in_use(),
        **{f"{name}_ms": value for name, value in ms.items()},
        "floor_ms": floor,
        "ours_over_floor": ms["ours"] / floor,
        "ours_over_official": None if ms["official"] is None else ms["ours"] / ms["official"],
        "user_over_ours": None if ms["user"] is None else ms["user"] / ms["ours"],
        "infer_ms": act["infer"],
        "train_ms": act["train"],
        "flops": flops,
        "gflops": flops / ms["ours"] / 1e6,
        "user_model": user_info,
        "config": config.to_dict(),
    }
