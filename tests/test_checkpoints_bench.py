"""Benchmark: loading the pretrained decoder from an official-size checkpoint must not read
its 1.8 GB puzzle-embedding table. Run with `pytest tests/test_checkpoints_bench.py -n 0 --runbenchmark`.

Each measurement runs in a fresh Python process: after building the model it resets the
peak resident set size (Linux `/proc/self/clear_refs`, so the model's own construction
does not mask the load) and reports the peak (VmHWM) minus the RSS before the load, and
the load's own time. (pytest-benchmark's timing covers the whole process, torch import
included.) A control loads the same file without memory-mapping and must grow by about
the table's size, which shows the measurement can see the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from etrm.checkpoints import OFFICIAL_PREFIX
from etrm.config import official_arc1_config
from etrm.models import build_model

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak-RSS reset needs Linux /proc")

NUM_PUZZLES, PUZZLE_DIM = 876_406, 512  # the official ARC-AGI-1 table: 1.67 GiB of float32
TABLE_BYTES = NUM_PUZZLES * PUZZLE_DIM * 4
LEGACY_ROWS = 131_072  # 256 MiB: enough to see the legacy fallback read it

_MEASURE = r"""
import json, sys, time, warnings
import torch
from etrm.checkpoints import load_pretrained_decoder
from etrm.config import official_arc1_config
from etrm.models import build_model

def status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))

path, mode = sys.argv[1], sys.argv[2]
torch.manual_seed(0)
head = build_model(official_arc1_config(model_type="etrm", puzzle_emb_ndim=0, num_puzzle_identifiers=1))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS, so model building does not mask the load
before = status_kib("VmRSS")
start = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    if mode == "decoder":
        report = load_pretrained_decoder(head, path)
        loaded = len(report.loaded_params) + len(report.loaded_buffers)
    else:  # control: a plain, non-mmap load materialises every tensor
        loaded = len(torch.load(path, map_location="cpu", weights_only=True))
seconds = time.perf_counter() - start
peak = status_kib("VmHWM")
print(json.dumps({"seconds": seconds, "growth_bytes": (peak - before) * 1024, "loaded": loaded,
                  "warnings": [str(w.message) for w in caught]}))
"""


def _official_decoder_state(rows: int, table: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Official-layout TRM state dict at hidden 512 with a `rows`-row puzzle table."""
    torch.manual_seed(0)
    head = build_model(official_arc1_config(num_puzzle_identifiers=1))
    state = {"_orig_mod." + k: v for k, v in head.state_dict().items()}  # compiled LossHead layout
    state[OFFICIAL_PREFIX + "inner.puzzle_emb.weights"] = table if table is not None else torch.randn(rows, PUZZLE_DIM)
    return state


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("official_size")
    # A file-backed table (sparse zeros) so building the checkpoint needs no 1.8 GB of RAM here.
    table = torch.from_file(str(folder / "table.bin"), shared=True, size=NUM_PUZZLES * PUZZLE_DIM, dtype=torch.float32)
    path = folder / "step_518071"
    torch.save(_official_decoder_state(NUM_PUZZLES, table.view(NUM_PUZZLES, PUZZLE_DIM)), path)
    del table
    (folder / "table.bin").unlink()
    assert path.stat().st_size > TABLE_BYTES
    return path


def _measure(path: Path, mode: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(path), mode],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.benchmark
def test_decoder_load_does_not_read_the_puzzle_table(benchmark, big_checkpoint):
    results = []
    benchmark.pedantic(lambda: results.append(_measure(big_checkpoint, "decoder")), rounds=3, iterations=1)
    control = _measure(big_checkpoint, "full")
    growth = max(r["growth_bytes"] for r in results)
    benchmark.extra_info.update(
        table_mib=TABLE_BYTES / 2**20,
        decoder_load_seconds=[round(r["seconds"], 3) for r in results],
        decoder_load_peak_growth_mib=round(growth / 2**20, 1),
        full_load_seconds=round(control["seconds"], 3),
        full_load_peak_growth_mib=round(control["growth_bytes"] / 2**20, 1),
    )
    print("\n" + json.dumps(benchmark.extra_info, indent=1))
    assert all(r["loaded"] == 14 for r in results)  # 12 decoder parameters + H_init, L_init
    assert control["growth_bytes"] > 0.9 * TABLE_BYTES, "control: a full load must show the table in RSS"
    assert growth < 0.1 * TABLE_BYTES, f"decoder load grew peak RSS by {growth / 2**20:.0f} MiB"


@pytest.mark.benchmark
def test_legacy_checkpoint_is_loaded_whole_with_a_clear_message(tmp_path):
    path = tmp_path / "step_1"
    torch.save(_official_decoder_state(LEGACY_ROWS), path, _use_new_zipfile_serialization=False)
    result = _measure(path, "decoder")
    assert result["loaded"] == 14
    assert any("legacy (non-zip) checkpoint format: it cannot be memory-mapped" in w for w in result["warnings"])
    # The message is true: the whole table was read.
    assert result["growth_bytes"] > 0.9 * LEGACY_ROWS * PUZZLE_DIM * 4
