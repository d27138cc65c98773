"""Benchmarks of the recursion step: `pytest -m benchmark --runbenchmark -n 0` (or `tox -e bench`).

Rows: one inference ACT step and one training step (forward + backward) of TRM and ETRM,
and a full evaluation episode, at the tiny, mid and official sizes (etrm.bench.SIZES), on
CPU with two threads and on CUDA when present. Figures that need two measurements taken
side by side (ETRM/TRM cost,
ours vs the optimised official-style re-implementation, share of the matmul peak) are in each row's
`extra_info` (see `--benchmark-json`); the second measurement runs in pytest-benchmark's
untimed `setup`, so the two alternate A B A B and share the machine's load alike.
"""

from __future__ import annotations

import os
import time

import pytest
import torch
from reference.official_style import OfficialStyleDecoder

from etrm import bench
from etrm.bench.compare import MODES, cxx_compiler, decoder_step, official_step
from etrm.bench.official import OFFICIAL_ENV, OfficialCodeError, check_same_computation, import_official
from etrm.bfloat16 import native_bfloat16_products
from etrm.inference import run_episode
from etrm.layers import onednn_linear_available, use_onednn_linear

pytestmark = pytest.mark.benchmark

CPU_THREADS = 2  # the reference machine's cores; fixed so that runs compare
ROUNDS = {"tiny": 20, "mid": 5, "official": 3}
EPISODE_ROUNDS = {"tiny": 10, "mid": 3, "official": 1}  # an episode is halt_max_steps (16) steps
WARMUP = 1
DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available on this machine")
    ),
]
SIZES = list(bench.SIZES)


@pytest.fixture(autouse=True, scope="module")
def cpu_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(CPU_THREADS)
    yield
    torch.set_num_threads(before)


class Companion:
    """A second call timed in pedantic's `setup`, alternating with the benchmarked one."""

    def __init__(self, call, device: str):
        self.call, self.sync, self.seconds = call, bench.synchronizer(device), []

    def __call__(self) -> None:
        self.sync()
        start = time.perf_counter()
        self.call()
        self.sync()
        self.seconds.append(time.perf_counter() - start)

    def median_ms(self) -> float:
        return bench.median_ms(self.seconds[WARMUP:])  # setup also runs before the warm-up round


def run(benchmark, call, device: str, size: str, setup=None, rounds: dict[str, int] = ROUNDS) -> float | None:
    """Benchmark `call` (synchronised); the median in ms, or None when benchmarking is disabled."""
    sync = bench.synchronizer(device)

    def target() -> None:
        call()
        sync()

    benchmark.pedantic(target, setup=setup, rounds=rounds[size], warmup_rounds=WARMUP, iterations=1)
    return None if benchmark.stats is None else 1e3 * benchmark.stats.stats.median


def step(size: str, model: str, device: str, kind: str):
    cfg = bench.SIZES[size].config(model)
    head = bench.make_head(cfg, device)
    batch = bench.make_batch(size, cfg, device)
    return cfg, (bench.inference_step if kind == "infer" else bench.training_step)(head, batch)


# Read by `injected_slowdown` alone: tests/test_bench_gate.py sets it to show the compare recipe failing.
SLOWDOWN_ENV = "ETRM_BENCH_INJECT_SLOWDOWN"


@pytest.fixture
def injected_slowdown() -> int:
    """How many times each timed call of test_recursion_step runs its step: 1, unless
    $ETRM_BENCH_INJECT_SLOWDOWN asks for a deliberate slowdown."""
    return int(os.environ.get(SLOWDOWN_ENV, "1"))


@pytest.mark.parametrize("kind", ["infer", "train"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("model", ["trm", "etrm"])
@pytest.mark.parametrize("size", SIZES)
def test_recursion_step(benchmark, size, model, device, kind, injected_slowdown):
    cfg, once = step(size, model, device, kind)

    def call() -> None:
        for _ in range(injected_slowdown):
            once()

    flops = bench.step_flops(cfg, bench.SIZES[size].batch)
    benchmark.extra_info.update(
        size=size, model=model, device=device, kind=kind, threads=torch.get_num_threads(), decoder_flops=flops
    )
    median = run(benchmark, call, device, size)
    if median is not None and kind == "infer":
        benchmark.extra_info["gflops"] = flops / median / 1e6


@pytest.mark.parametrize("kind", ["infer", "train"])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("size", SIZES)
def test_etrm_over_trm_cost(benchmark, size, device, kind):
    """The ETRM step (benchmarked) against the TRM step (alternating): the encoder re-runs
    on every ACT step, and `extra_info["etrm_over_trm"]` is what that costs."""
    _, etrm_call = step(size, "etrm", device, kind)
    _, trm_call = step(size, "trm", device, kind)
    trm = Companion(trm_call, device)
    median = run(benchmark, etrm_call, device, size, setup=trm)
    if median is not None:
        benchmark.extra_info.update(
            size=size,
            device=device,
            kind=kind,
            etrm_ms=median,
            trm_ms=trm.median_ms(),
            etrm_over_trm=median / trm.median_ms(),
        )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "size,context",
    [
        (size, context)
        for size in SIZES
        for context in ("carried", "recomputed")
        if (size, context) != ("official", "recomputed")
    ],
)
def test_etrm_over_trm_episode_cost(benchmark, size, context, device):
    """A full evaluation episode (`etrm.inference.run_episode`: halt_max_steps ACT steps)
    of ETRM (benchmarked) against TRM's (alternating). "carried": the context is encoded
    once per episode (ETRM's default in evaluation); "recomputed": re-encoded every step
    (`reuse_eval_context = False`, the cost before). Target: etrm_over_trm <= 1.1 at mid."""
    heads = {}
    for model in ("etrm", "trm"):
        cfg = bench.SIZES[size].config(model)
        heads[model] = (bench.make_head(cfg, device), bench.make_batch(size, cfg, device))
    heads["etrm"][0].model.reuse_eval_context = context == "carried"
    trm = Companion(lambda: run_episode(*heads["trm"]), device)
    median = run(benchmark, lambda: run_episode(*heads["etrm"]), device, size, setup=trm, rounds=EPISODE_ROUNDS)
    if median is not None:
        benchmark.extra_info.update(
            size=size,
            device=device,
            context=context,
            threads=torch.get_num_threads(),
            steps=heads["etrm"][0].config.halt_max_steps,
            etrm_ms=median,
            trm_ms=trm.median_ms(),
            etrm_over_trm=median / trm.median_ms(),
        )


@pytest.fixture
def linear_kernel(request):
    """ "onednn" (the default: etrm.layers.use_onednn_linear) or "f_linear" (torch's F.linear
    throughout, as the re-implementation runs), restored afterwards."""
    previous = use_onednn_linear(request.param == "onednn")
    yield request.param
    use_onednn_linear(previous)


@pytest.mark.parametrize(
    "device,linear_kernel",
    [
        ("cpu", "f_linear"),
        pytest.param(
            "cpu",
            "onednn",
            marks=pytest.mark.skipif(
                not onednn_linear_available(), reason="oneDNN's linear kernel is not in this torch build"
            ),
        ),
        pytest.param("cuda", "f_linear", marks=DEVICES[1].marks),
    ],
    indirect=["linear_kernel"],
)
@pytest.mark.parametrize("size", ["mid", "official"])
def test_recursion_vs_official_style_reimpl(benchmark, size, device, linear_kernel):
    """Our decoder's inference recursion (benchmarked) against the optimised official-style
    re-implementation (tests/reference/official_style.py, faster than the official code
    itself) with the same weights (alternating), plus a large matmul's throughput measured
    in the same run: `extra_info` has ours_over_reimpl, gflops, matmul_gflops and both
    shares, and the step's kernel floor (bench.kernel_floor_ms) over the re-implementation:
    the least ours_over_reimpl that the same kernels allow."""
    cfg = bench.SIZES[size].config("trm")
    batch_size = bench.SIZES[size].batch
    ours = bench.make_head(cfg, device).model.inner.eval()
    reimpl = OfficialStyleDecoder(cfg).to(device).eval()
    reimpl.load_state_dict(ours.state_dict())
    batch = bench.make_batch(size, cfg, device)
    carry = ours.reset_carry(
        torch.ones(batch_size, dtype=torch.bool, device=device), ours.empty_carry(batch_size, device)
    )

    def ours_step() -> None:
        with torch.no_grad():
            ours(carry, batch["inputs"], ours.puzzle_prefix(batch["puzzle_identifiers"]))

    def reimpl_step() -> None:
        with torch.no_grad():
            reimpl(carry, batch)

    matmul_before = bench.matmul_gflops(device)
    other = Companion(reimpl_step, device)
    median = run(benchmark, ours_step, device, size, setup=other)
    if median is None:
        return
    matmul = (matmul_before + bench.matmul_gflops(device)) / 2  # the machine's state at both ends
    floor = bench.kernel_floor_ms(cfg, batch_size, device)
    flops = bench.step_flops(cfg, batch_size)
    gflops, reimpl_gflops = flops / median / 1e6, flops / other.median_ms() / 1e6
    benchmark.extra_info.update(
        size=size,
        device=device,
        linear=linear_kernel,
        threads=torch.get_num_threads(),
        ours_ms=median,
        reimpl_ms=other.median_ms(),
        ours_over_reimpl=median / other.median_ms(),
        gflops=gflops,
        reimpl_gflops=reimpl_gflops,
        matmul_gflops=matmul,
        share_of_matmul=gflops / matmul,
        reimpl_share_of_matmul=reimpl_gflops / matmul,
        kernel_floor_ms=floor,
        floor_over_reimpl=floor / other.median_ms(),
    )


def official_classes():
    """The official TRM's inner model class and its config class, imported from the checkout named
    by $ETRM_OFFICIAL_TRM (its code is not shipped with etrm); skips with the reason when it cannot
    be imported."""
    root = os.environ.get(OFFICIAL_ENV)
    if not root:
        pytest.skip(
            f"set {OFFICIAL_ENV} to a checkout of SamsungSAILMontreal/TinyRecursiveModels to time the official code"
        )
    try:
        return import_official(root)
    except OfficialCodeError as err:  # its own requirements (pydantic, einops) are the user's to install
        pytest.skip(f"{OFFICIAL_ENV}={root}: {err}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("size", ["mid", "official"])
def test_recursion_vs_the_official_code(benchmark, size, dtype, mode):
    """Our inference recursion step (benchmarked) against the official TRM code's
    (`TinyRecursiveReasoningModel_ACTV1_Inner.forward`, its own checkout) with the same weights and
    the step's kernel floor (bench.kernel_floor_step: its projections and attention alone), the two
    timed alternately in pytest's setup; eager, or both sides under torch.compile. `extra_info` has
    the fields of `etrm bench recursion --json`. Targets: ours_over_floor at most 1.05 eager in
    float32; compiled, ours_over_official at most 1. The logits are compared first, so the two do
    the same work."""
    classes = official_classes()
    if mode == "compiled" and cxx_compiler() is None:
        pytest.skip("--compile on CPU needs a C++ compiler for torch.compile")
    cfg = bench.SIZES[size].config("trm").replace(forward_dtype=dtype)
    head = bench.make_head(cfg, "cpu")
    batch = bench.make_batch(size, cfg, "cpu")
    compiled = mode == "compiled"
    ours_step, official = decoder_step(head, batch, compiled), official_step(classes, head, batch, compiled)
    check_same_computation(ours_step(), official(), dtype)  # and compiles both
    other, floor = Companion(official, "cpu"), Companion(bench.kernel_floor_step(cfg, bench.SIZES[size].batch), "cpu")

    def companions() -> None:
        other()
        floor()

    median = run(benchmark, ours_step, "cpu", size, setup=companions)
    if median is not None:
        benchmark.extra_info.update(
            size=size,
            mode=mode,
            dtype=dtype,
            threads=torch.get_num_threads(),
            ours_ms=median,
            official_ms=other.median_ms(),
            floor_ms=floor.median_ms(),
            ours_over_floor=median / floor.median_ms(),
            ours_over_official=median / other.median_ms(),
            native_bfloat16=native_bfloat16_products(),
        )
