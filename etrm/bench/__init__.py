"""Timing of the recursion step and `etrm bench recursion`.

- `etrm.bench.timing`: the benchmark sizes, the FLOP count, the steps timed, interleaved timing
  and the kernel floor (what the pytest benchmarks in tests/test_bench_recursion.py build on);
- `etrm.bench.official`: the official TRM code from a checkout, built with our weights;
- `etrm.bench.compare`: ours, the official code and a researcher's model in one run, eager or
  compiled, each against the kernel floor;
- `etrm.bench.command`: the command line.
"""

from etrm.bench.timing import (
    BENCH_DEVICES,
    BENCH_MODELS,
    SIZES,
    TYPICAL_DEMOS,
    BenchSize,
    alternate,
    get_size,
    inference_step,
    kernel_floor_ms,
    kernel_floor_step,
    make_batch,
    make_head,
    matmul_gflops,
    median_ms,
    onednn_linear_in_use,
    step_flops,
    synchronizer,
    time_recursion,
    training_step,
)


def add_parser(subparsers) -> None:
    """`etrm bench` (etrm.cli imports the command's module only when it is named)."""
    from etrm.bench.command import add_parser as add

    add(subparsers)


__all__ = [
    "BENCH_DEVICES",
    "BENCH_MODELS",
    "SIZES",
    "TYPICAL_DEMOS",
    "BenchSize",
    "add_parser",
    "alternate",
    "get_size",
    "inference_step",
    "kernel_floor_ms",
    "kernel_floor_step",
    "make_batch",
    "make_head",
    "matmul_gflops",
    "median_ms",
    "onednn_linear_in_use",
    "step_flops",
    "synchronizer",
    "time_recursion",
    "training_step",
]
