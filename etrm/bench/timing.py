"""Timing of the recursion step: benchmark sizes, the FLOP count, the steps timed, the kernel floor.

A measurement is the median wall-clock time of a call after warm-up; calls of the things
compared are interleaved (A B A B ...) so that load from other processes hits all of
them alike, and CUDA is synchronised before and after each call. The pytest benchmarks
(tests/test_bench_recursion.py) build their models and batches here, so `etrm bench` and
`pytest -m benchmark --runbenchmark -n 0` measure the same thing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from etrm.bfloat16 import attention
from etrm.config import ModelConfig, tiny_config
from etrm.layers import CastedLinear, onednn_linear_available, weight_casts_shared
from etrm.models import LossHead, build_model
from etrm.synthetic import random_batch

BENCH_MODELS = ("trm", "etrm", "etrmtrm")
BENCH_DEVICES = ("cpu", "cuda")
# A typical ARC-AGI-1 task has about 3 demonstration pairs; padded demo slots cost nothing.
TYPICAL_DEMOS = 3


@dataclass(frozen=True)
class BenchSize:
    """A benchmark configuration: model settings (on top of `base`) and a batch size."""

    name: str
    batch: int
    overrides: Mapping[str, Any] = field(default_factory=dict)
    base: str = "official"  # "tiny": etrm.config.tiny_config; "official": ModelConfig's defaults

    def config(self, model_type: str = "trm") -> ModelConfig:
        if model_type not in BENCH_MODELS:
            raise ValueError(f"unknown model {model_type!r}; valid: {', '.join(BENCH_MODELS)}")
        if self.base == "tiny":
            return tiny_config(model_type, **self.overrides)
        # The TRM puzzle vector fills the first prefix token, as in the official ARC recipe.
        ndim = self.overrides.get("hidden_size", ModelConfig.hidden_size) if model_type == "trm" else 0
        return ModelConfig(model_type=model_type, num_puzzle_identifiers=16, puzzle_emb_ndim=ndim, **self.overrides)


SIZES: dict[str, BenchSize] = {
    "tiny": BenchSize("tiny", batch=2, base="tiny"),
    "mid": BenchSize(
        "mid",
        batch=2,
        overrides=dict(
            hidden_size=128,
            num_heads=4,
            seq_len=900,
            puzzle_emb_len=16,
            H_cycles=3,
            L_cycles=4,
            L_layers=2,
            expansion=4.0,
            forward_dtype="float32",
        ),
    ),
    "official": BenchSize(
        "official",
        batch=1,
        overrides=dict(
            hidden_size=512,
            num_heads=8,
            seq_len=900,
            puzzle_emb_len=16,
            H_cycles=3,
            L_cycles=4,
            L_layers=2,
            expansion=4.0,
            forward_dtype="float32",
        ),
    ),
}


def get_size(size: str | BenchSize) -> BenchSize:
    if isinstance(size, BenchSize):
        return size
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown benchmark size {size!r}; valid: {', '.join(SIZES)}") from None


def step_flops(config: ModelConfig, batch: int) -> int:
    """FLOPs of one inference ACT step of the decoder (DESIGN.md section 10): H*(L+1) calls of
    the layer stack, each B*S*(2*L_layers*(4h^2 + 3h*inter) + 4*L_layers*S*h): the
    projections plus attention scores and values. The demo encoder is not counted."""
    h, s, inter, layers = config.hidden_size, config.full_seq_len, config.swiglu_width, config.L_layers
    per_call = batch * s * (2 * layers * (4 * h * h + 3 * h * inter) + 4 * layers * s * h)
    return config.H_cycles * (config.L_cycles + 1) * per_call


# --- building what is timed ---------------------------------------------------------------


def make_head(config: ModelConfig, device: str | torch.device = "cpu", seed: int = 0) -> LossHead:
    torch.manual_seed(seed)
    return build_model(config).to(device)


def make_batch(
    size: str | BenchSize, config: ModelConfig, device: str | torch.device = "cpu", seed: int = 0
) -> dict[str, torch.Tensor]:
    size = get_size(size)
    demos = [min(TYPICAL_DEMOS, config.max_demos)] * size.batch if config.uses_encoder else None
    return random_batch(config, size.batch, seed=seed, demo_counts=demos, device=device)


def inference_step(head: LossHead, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One evaluation ACT step per call; the carry persists across calls as in evaluation."""
    state = {"carry": head.initial_carry(batch)}

    def step() -> None:
        head.eval()
        with torch.no_grad():
            state["carry"] = head(state["carry"], batch)[0]

    return step


def training_step(head: LossHead, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
    """One training ACT step per call: forward, loss / batch size, backward (no optimiser)."""
    state = {"carry": head.initial_carry(batch)}
    batch_size = batch["inputs"].shape[0]

    def step() -> None:
        head.train()
        carry, loss, *_ = head(state["carry"], batch)
        (loss / batch_size).backward()
        head.zero_grad(set_to_none=True)
        state["carry"] = carry

    return step


# --- timing ----------------------------------------------------------------------------------


def synchronizer(device: str | torch.device) -> Callable[[], None]:
    """What makes a timer see finished work: torch.cuda.synchronize on CUDA, nothing on CPU."""
    device = torch.device(device)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def alternate(
    calls: Mapping[str, Callable[[], object]],
    repeat: int,
    *,
    warmup: int = 1,
    device: str | torch.device = "cpu",
    progress: bool = False,
    desc: str = "timing",
) -> dict[str, list[float]]:
    """Time each call `repeat` times, interleaved A B A B ..., after `warmup` untimed rounds.
    Returns the seconds of every timed call, per name."""
    if repeat < 1 or warmup < 0:
        raise ValueError(f"repeat must be >= 1 and warmup >= 0, got repeat={repeat}, warmup={warmup}")
    sync = synchronizer(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in tqdm(range(warmup + repeat), desc=desc, disable=not progress, leave=False):
        for name, call in calls.items():
            sync()
            start = time.perf_counter()
            call()
            sync()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def median_ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def time_recursion(
    size: str | BenchSize = "tiny",
    model: str = "trm",
    device: str | torch.device = "cpu",
    repeat: int = 5,
    *,
    warmup: int = 1,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Median times of one inference ACT step and one training step (forward + backward).

    `gflops` is the decoder's FLOP count (`step_flops`) over the inference time; for the
    encoder models the encoder's own work is in the time but not in the count."""
    size = get_size(size)
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device cuda requested but CUDA is not available on this machine")
    config = size.config(model)
    head = make_head(config, device, seed)
    batch = make_batch(size, config, device, seed)
    times = alternate(
        {"infer": inference_step(head, batch), "train": training_step(head, batch)},
        repeat,
        warmup=warmup,
        device=device,
        progress=progress,
        desc=f"{size.name} {model} {device.type}",
    )
    flops = step_flops(config, size.batch)
    infer_ms, train_ms = median_ms(times["infer"]), median_ms(times["train"])
    return {
        "size": size.name,
        "model": model,
        "device": str(device),
        "batch": size.batch,
        "threads": torch.get_num_threads(),
        "repeat": repeat,
        "onednn_linear": onednn_linear_in_use(),
        "infer_ms": infer_ms,
        "train_ms": train_ms,
        "flops": flops,
        "gflops": flops / infer_ms / 1e6,
        "config": config.to_dict(),
    }


def step_blocks(config: ModelConfig) -> int:
    """Applications of one block in an inference step: H_cycles x (L_cycles + 1) x L_layers."""
    return config.H_cycles * (config.L_cycles + 1) * config.L_layers


def floor_kernels(
    config: ModelConfig, batch: int, device: str | torch.device = "cpu"
) -> dict[str, Callable[[], torch.Tensor]]:
    """A block's big kernels on warm inputs at the step's shapes: the four projections (through
    CastedLinear, so the oneDNN setting applies) and the attention, in the config's forward_dtype
    on the routes the model takes (bfloat16 emulation, attention). Run them under no_grad and
    `weight_casts_shared`, as a step runs its layers."""
    device, dtype = torch.device(device), getattr(torch, config.forward_dtype)
    h, s, heads, inter = config.hidden_size, config.full_seq_len, config.num_heads, config.swiglu_width
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, s, h, generator=gen).to(device, dtype)
    hidden = torch.randn(batch, s, inter, generator=gen).to(device, dtype)
    q, k, v = (torch.randn(batch, heads, s, h // heads, generator=gen).to(device, dtype) for _ in range(3))
    layers = {
        name: CastedLinear(fan_in, fan_out).to(device)
        for name, fan_in, fan_out in (("qkv", h, 3 * h), ("o", h, h), ("gate_up", h, 2 * inter), ("down", inter, h))
    }
    calls = {
        name: (lambda layer=layer, inp=(hidden if name == "down" else x): layer(inp)) for name, layer in layers.items()
    }
    calls["attention"] = lambda: attention(q, k, v)
    return calls


def kernel_floor_ms(config: ModelConfig, batch: int, device: str | torch.device = "cpu", repeat: int = 5) -> float:
    """What one inference step's big kernels alone cost: `floor_kernels` each timed in isolation,
    summed and multiplied by the step's block count. No implementation of the same recursion on
    the same kernels can be faster than this (element-wise work, RoPE and the norms come on top),
    so it bounds what a speed target against another implementation can ask."""
    with torch.no_grad(), weight_casts_shared():
        times = alternate(floor_kernels(config, batch, device), repeat, device=device)
    return step_blocks(config) * sum(median_ms(t) for t in times.values())


def kernel_floor_step(config: ModelConfig, batch: int, device: str | torch.device = "cpu") -> Callable[[], None]:
    """The kernel floor as one call: `floor_kernels` once per block of a step, in sequence, with
    each weight cast once per call as a step casts it. A call as long as the step it bounds, so
    the two can be timed interleaved and share the machine's load alike."""
    kernels, blocks = list(floor_kernels(config, batch, device).values()), step_blocks(config)

    def step() -> None:
        with torch.no_grad(), weight_casts_shared():
            for _ in range(blocks):
                for kernel in kernels:
                    kernel()

    return step


def onednn_linear_in_use() -> bool:
    """Whether CastedLinear's oneDNN route is switched on and this torch build has it."""
    return CastedLinear.onednn and onednn_linear_available()


def matmul_gflops(device: str | torch.device = "cpu", n: int = 2048, repeat: int = 5) -> float:
    """Throughput of a large float32 (n x n) @ (n x n) matmul: the ceiling the recursion is
    measured against. Median over `repeat` calls after one warm-up."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    times = alternate({"matmul": lambda: torch.mm(a, b)}, repeat, device=device)["matmul"]
    return 2 * n**3 / statistics.median(times) / 1e9
