"""Benchmark: H7's headroom measurement at the official width (hidden 512, seq 900 + 16,
H_cycles 3, L_cycles 4, bfloat16), its cost per task and per optimisation step.
`pytest -m benchmark --runbenchmark -n 0 tests/test_bench_h7.py --benchmark-json out.json`

The artifacts of `tests/official_width.py` hold random weights, so the measurement is run
with the trained-decoder gate off: it costs what it costs on a trained checkpoint (the gate
itself, one training-split episode, is all an untrained one pays). One held-out task with 1
and with 3 steps: per step = the difference / 2; per task = the 1-step time less one step.
"""

from __future__ import annotations

import time

import pytest
import torch
from official_width import write_official_width

pytestmark = pytest.mark.benchmark


def test_headroom_cost_per_task_and_step_at_official_width(benchmark, tmp_path):
    from etrm.checkpoints import load_model
    from etrm.checks import h7_generalisation as gen
    from etrm.checks.h7_measure import measure_case
    from etrm.interface import TRMInterface

    paths = write_official_width(tmp_path / "artifacts")
    head = load_model(paths["etrm_checkpoint"]).eval()
    model, trm = TRMInterface.from_etrm(head), paths["trm_checkpoint"]
    prefixes, note = gen.trm_puzzle_prefixes(
        trm, gen.trm_data_for(trm, paths["data"]), model.puzzle_emb_len, model.hidden_size
    )
    seconds = {}

    def measure(steps):
        start = time.perf_counter()
        case = measure_case(
            model,
            head.config,
            paths["data"],
            prefixes,
            note,
            tasks=1,
            steps=steps,
            progress=False,
            require_trained=False,
        )
        seconds[steps] = time.perf_counter() - start
        return case

    benchmark.pedantic(lambda: measure(1), rounds=1, iterations=1)
    case = measure(3)
    per_step = (seconds[3] - seconds[1]) / 2
    benchmark.extra_info.update(
        one_step_s=round(seconds[1], 1),
        three_steps_s=round(seconds[3], 1),
        per_step_s=round(per_step, 1),
        per_task_s=round(seconds[1] - per_step, 1),
        threads=torch.get_num_threads(),
    )
    assert len(case.measurement.tasks) == 1 and case.measurement.tasks[0].trm_loss is not None
