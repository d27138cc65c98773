"""Dataset build benchmarks (DESIGN.md section 10): run with
``pytest tests/test_data_bench.py -n 0 --runbenchmark``.

The full one builds all 800 ARC-AGI-1 tasks with N = 100 augmentations in a fresh
subprocess and records its peak resident memory, which must stay below the size of the
token arrays it writes (they are streamed to disk, never held whole)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from etrm.data.build import build_dataset

BUILD_SCRIPT = """
import re, sys
from etrm.data.build import build_dataset
build_dataset(sys.argv[1], source="arc1", mode=sys.argv[2], num_aug=int(sys.argv[3]), seed=0, progress=False)
with open("/proc/self/status") as status:
    print(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1))
"""


def build_in_subprocess(out: Path, mode: str, num_aug: int) -> float:
    """Build in a fresh interpreter; returns its peak RSS in MiB, as the child reads it from
    its own VmHWM. Both ru_maxrss figures mislead here: the parent's RUSAGE_CHILDREN is the
    largest child of the whole session, and the child's RUSAGE_SELF keeps the parent's
    peak from before exec (Linux carries it over)."""
    done = subprocess.run(
        [sys.executable, "-c", BUILD_SCRIPT, str(out), mode, str(num_aug)], check=True, capture_output=True, text=True
    )
    return int(done.stdout.split()[-1]) / 1024


@pytest.mark.benchmark
def test_bench_build_small(benchmark, tmp_path):
    """40 tasks x 10 augmentations, in process: a quick figure for regressions."""
    counter = iter(range(1000))

    def run() -> Path:
        return build_dataset(tmp_path / f"b{next(counter)}", mode="fewshot", num_aug=10, max_tasks=20, progress=False)

    out = benchmark.pedantic(run, rounds=3, iterations=1)
    info = json.loads((out / "build_info.json").read_text())
    benchmark.extra_info["rows"] = sum(s["rows"] for s in info["splits"].values())


@pytest.mark.benchmark
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="the peak memory is read from /proc (Linux only)")
@pytest.mark.parametrize("mode", ["fewshot", "trm"])
def test_bench_build_all_arc1_with_100_augmentations(benchmark, tmp_path, mode):
    out = tmp_path / "full"
    peak_mib = benchmark.pedantic(build_in_subprocess, args=(out, mode, 100), rounds=1, iterations=1)
    info = json.loads((out / "build_info.json").read_text())
    token_bytes = sum(p.stat().st_size for p in out.glob("*/all__*puts.npy")) + sum(
        p.stat().st_size for p in out.glob("*/all__labels.npy")
    )
    benchmark.extra_info.update(
        peak_rss_mib=round(peak_mib, 1),
        token_mib=round(token_bytes / 2**20, 1),
        rows={s: v["rows"] for s, v in info["splits"].items()},
        puzzles={s: v["puzzles"] for s, v in info["splits"].items()},
    )
    print(
        f"\n{mode}: peak RSS {peak_mib:.0f} MiB for {token_bytes / 2**20:.0f} MiB of token arrays; "
        f"{benchmark.extra_info['rows']} rows"
    )
    assert info["tasks"] == {"training": 400, "evaluation": 400}
    assert peak_mib < token_bytes / 2**20  # streamed: memory stays below what was written
