"""Benchmark: H7's headroom measurement at the official width (hidden 512, seq 900 + 16,
H_cycles 3, L_cycles 4, bfloat16): the gate every `etrm investigate` pays on random weights,
and the cost per task and per optimisation step with the default bounds.
`pytest -m benchmark --runbenchmark -n 0 tests/test_bench_h7.py --benchmark-json out.json`

The artifacts of `tests/official_width.py` hold random weights, so the gate stops them (that
is what the first benchmark times); the second runs the measurement with the gate off
(`require_trained=False`), so it costs what it costs on a trained checkpoint. Its parts are
timed where they run: each free-context optimisation (K steps) and each scoring episode.
"""

from __future__ import annotations

import time

import pytest
import torch
from official_width import write_official_width

pytestmark = pytest.mark.benchmark


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    from etrm.checkpoints import load_model
    from etrm.checks import h7_generalisation as gen
    from etrm.interface import TRMInterface

    paths = write_official_width(tmp_path_factory.mktemp("h7") / "artifacts")
    head = load_model(paths["etrm_checkpoint"]).eval()
    model, trm = TRMInterface.from_etrm(head), paths["trm_checkpoint"]
    prefixes, note = gen.trm_puzzle_prefixes(
        trm, gen.trm_data_for(trm, paths["data"]), model.puzzle_emb_len, model.hidden_size
    )
    return model, head.config, paths["data"], prefixes, note


def test_gate_on_random_weights_at_official_width(benchmark, official):
    """The default measurement (tasks for the width, 8 steps) on random weights: it stops at the gate."""
    from etrm.checks import h7_headroom as headroom
    from etrm.checks.h7_measure import measure_case

    model, config, data, prefixes, note = official
    case = benchmark.pedantic(
        lambda: measure_case(
            model, config, data, prefixes, note, tasks=None, steps=headroom.DEFAULT_STEPS, progress=False
        ),
        rounds=1,
        iterations=1,
    )
    m = case.measurement
    benchmark.extra_info.update(
        gate_s=round(m.seconds, 1), gate_queries=len(m.train_losses), threads=torch.get_num_threads()
    )
    assert "no claim" in m.no_claim and not m.tasks and len(m.train_losses) == headroom.GATE_TASKS


def test_headroom_cost_per_task_and_step_at_official_width(benchmark, official, monkeypatch):
    """One held-out task, 2 steps, gate off: per step = the optimisation / 2; per task = the
    optimisation and the (a)/(b)/(c) scoring; the rest is what any number of tasks pays once
    (the gate, the training-task losses, the contexts of the loaded puzzles)."""
    from etrm.checks import h7_headroom as headroom
    from etrm.checks import h7_probes as probes
    from etrm.checks.h7_measure import measure_case

    model, config, data, prefixes, note = official
    spent: dict[str, list[float]] = {"optimise_context": [], "episode_scores": []}
    for name in spent:
        monkeypatch.setattr(probes, name, _timed(getattr(probes, name), spent[name]))
    steps = 2
    case = benchmark.pedantic(
        lambda: measure_case(
            model, config, data, prefixes, note, tasks=1, steps=steps, progress=False, require_trained=False
        ),
        rounds=1,
        iterations=1,
    )
    total, (optimise,), scoring = case.measurement.seconds, spent["optimise_context"], spent["episode_scores"][-1]
    per_step, per_task = optimise / steps, optimise + scoring
    once = total - per_task
    default = once + headroom.default_tasks(model) * (scoring + headroom.DEFAULT_STEPS * per_step)
    benchmark.extra_info.update(
        total_s=round(total, 1),
        per_step_s=round(per_step, 1),
        scoring_s=round(scoring, 1),
        per_task_s=round(per_task, 1),
        once_s=round(once, 1),
        default_estimate_s=round(default),
        default_tasks=headroom.default_tasks(model),
        act_steps=case.measurement.act_steps,
        demo_queries=case.measurement.demo_queries,
        threads=torch.get_num_threads(),
    )
    assert len(case.measurement.tasks) == 1 and case.measurement.tasks[0].trm_loss is not None
    assert case.measurement.act_steps == headroom.DEFAULT_ACT_STEPS < model.halt_max_steps


def _timed(fn, into: list[float]):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - start)

    return wrapper
