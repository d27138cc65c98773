"""H7's measurement of one case: `tasks` held-out tasks (two puzzles each) and every training
task (TRAIN_AUGMENTATIONS puzzles each) of a few-shot build, on one model."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from etrm.checks import h7_headroom as headroom
from etrm.checks import h7_probes as probes
from etrm.interface import TRMInterface

TRAIN_AUGMENTATIONS = 4  # training-split puzzles per task: the ridge map's samples and "another task"
MIN_TRAIN_TASKS = 8  # training tasks whose contexts are read (at least; as many as held-out ones if more)


@dataclass(frozen=True)
class H7Case:
    measurement: headroom.H7Measurement
    train_names: list[str]
    heldout_names: list[str]
    trm_prefixes: dict[str, torch.Tensor] | None


def measure_case(
    model: TRMInterface,
    config,
    data_dir,
    prefixes,
    note: str,
    *,
    tasks: int | None,
    steps: int,
    act_steps: int = headroom.DEFAULT_ACT_STEPS,
    device: str = "cpu",
    progress: bool = True,
    require_trained: bool = True,
) -> H7Case:
    """`tasks` held-out tasks (two puzzles each; None: `headroom.default_tasks`, fewer at large
    widths) and at least MIN_TRAIN_TASKS training tasks, measured."""
    tasks = headroom.default_tasks(model) if tasks is None else tasks
    heldout = probes.load_task_probes(data_dir, "test", num_tasks=tasks, max_demos=config.max_demos, per_task=2)
    train = probes.load_task_probes(
        data_dir,
        "train",
        num_tasks=max(tasks, MIN_TRAIN_TASKS),
        max_demos=config.max_demos,
        per_task=TRAIN_AUGMENTATIONS,
    )
    measurement = headroom.measure_h7(
        model,
        heldout,
        train,
        steps=steps,
        act_steps=act_steps,
        max_demos=config.max_demos,
        trm_prefixes=prefixes,
        trm_note=note,
        device=device,
        progress=progress,
        require_trained=require_trained,
    )
    return H7Case(measurement, [p.name for p in train], [p.name for p in heldout], prefixes)
