"""The H7 measurements on the checkpoint under investigation: held-out and training tasks of
its dataset, the TRM's puzzle embeddings where the TRM and its dataset are known, bounded by
`--etrm-h7-tasks` / `--etrm-h7-steps` (`h7-tasks` / `h7-steps` under `etrm investigate`)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from etrm.checks import h7_generalisation as gen
from etrm.checks import h7_headroom as headroom
from etrm.checks import h7_probes as probes
from etrm.interface import TRMInterface
from etrm.testing.artifacts import USER

TRAIN_AUGMENTATIONS = 4  # training-split puzzles per task: the ridge map's samples and "another task"


@dataclass(frozen=True)
class H7Case:
    measurement: headroom.H7Measurement
    train_names: list[str]
    heldout_names: list[str]
    trm_prefixes: dict[str, torch.Tensor] | None


def trm_embeddings(artifacts, etrm_source: str, model: TRMInterface) -> tuple[dict | None, str]:
    """The TRM's prefixes by puzzle name, or why there are none (never a user's ETRM with our TRM)."""
    if artifacts.trm_checkpoint is None:
        return None, f"no TRM checkpoint: pass {artifacts.flag('trm_checkpoint')} PATH"
    if (artifacts.source("trm_checkpoint") == USER) != (etrm_source == USER):
        return None, (f"the TRM checkpoint is {artifacts.source('trm_checkpoint')} and the ETRM checkpoint "
                      f"{etrm_source}: pass both of yours")
    if model.missing("context_shape"):
        return None, model.missing("context_shape")
    trm = artifacts.require("trm_checkpoint")
    given = artifacts.trm_data_dir if artifacts.source("trm_data_dir") == artifacts.source("trm_checkpoint") else None
    data = gen.trm_data_for(trm, given)
    if data is None:
        return None, (f"{trm}: its dataset is not given and the data_paths of its all_config.yaml do not resolve: "
                      f"pass {artifacts.flag('trm_data_dir')} DIR")
    return gen.trm_puzzle_prefixes(trm, data, model.puzzle_emb_len, model.hidden_size)


def build_h7_case(model: TRMInterface, config, artifacts, *, tasks: int, steps: int, source: str,
                  progress: bool = True) -> H7Case:
    prefixes, note = trm_embeddings(artifacts, source, model)
    return measure_case(model, config, artifacts.data_for(config, "etrm_checkpoint"), prefixes, note, tasks=tasks,
                        steps=steps, device=artifacts.device, progress=progress)


def measure_case(model: TRMInterface, config, data_dir, prefixes, note: str, *, tasks: int, steps: int,
                 device: str = "cpu", progress: bool = True) -> H7Case:
    """`tasks` held-out tasks (two puzzles each) and every training task of a few-shot build, measured."""
    heldout = probes.load_task_probes(data_dir, "test", num_tasks=tasks, max_demos=config.max_demos, per_task=2)
    train = probes.load_task_probes(data_dir, "train", num_tasks=None, max_demos=config.max_demos,
                                    per_task=TRAIN_AUGMENTATIONS)
    measurement = headroom.measure_h7(model, heldout, train, steps=steps, max_demos=config.max_demos,
                                      trm_prefixes=prefixes, trm_note=note, device=device, progress=progress)
    return H7Case(measurement, [p.name for p in train], [p.name for p in heldout], prefixes)


# The bundled known-answer cases (fixtures/make_h7_cases.py): case -> (its TRM, encoder demo-blind).
KNOWN_CASES = {"bottleneck": ("trm", True), "context_blind": ("trm_no_context", False)}


def known_case(name: str, *, tasks: int = 4, steps: int = 8) -> H7Case:
    """A bundled case whose answer is known by construction, measured as a user's checkpoint is."""
    import pytest

    from etrm.bundled import fixtures_root
    from etrm.checkpoints import load_model
    from etrm.suite.broken import DemoBlindEncoder, with_encoder
    from etrm.testing.verdict import NOT_RUN

    root = fixtures_root() / "h7"
    trm_name, demo_blind = KNOWN_CASES[name]
    if not (root / name / "step_final").is_file():
        pytest.skip(f"{NOT_RUN}bundled H7 case missing at {root / name}: run `python fixtures/make_h7_cases.py`")
    head = load_model(root / name / "step_final")
    if demo_blind:  # trained through this wrapper, saved without it
        head = with_encoder(head, DemoBlindEncoder)
    config = head.config
    prefixes, note = gen.trm_puzzle_prefixes(root / trm_name / "step_final", root / "data" / "trm",
                                             config.puzzle_emb_len, config.hidden_size)
    return measure_case(TRMInterface.from_etrm(head), config, root / "data" / "fewshot", prefixes, note, tasks=tasks,
                        steps=steps, progress=False)
