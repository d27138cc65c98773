"""One Experiment 1 run, in one process or on every rank under torchrun, resumable.

The loop of nanoGPT's train.py on etrm's `Trainer`: each rank builds the same model
(same seed), loads the TRM decoder, wraps the encoder in DDP when there are several
ranks (gradients summed over ranks by a communication hook, because the loss is divided
by the global batch, as the official trainer does), reads its own rows of every global
batch, and draws ACT exploration from its own seed (`seed + rank`). Evaluation is sharded
the same way and gathered on rank 0 by the evaluator. Only rank 0 writes the metrics log,
the checkpoints and W&B. Each step: train, evaluate if due, checkpoint if due, in that
order, so a checkpoint holds everything logged up to its step.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from etrm.experiment1.distributed import Processes, from_master, gather_to_master, sum_gradients_hook
from etrm.experiment1.settings import RunSettings
from etrm.experiment1.state import (
    RESUME_FILE,
    check_same_run,
    load_resume_state,
    rng_state,
    save_resume_state,
    save_weights,
    set_rng_state,
)
from etrm.metrics_log import cut_log

LOG_NAME = "metrics.jsonl"  # the run's metrics, in --out


@dataclass
class BuiltModel:
    """What a run trains: the loss head (etrm's `LossHead` or a user's behind an adapter),
    the record of the decoder it loaded, and how to describe and save it."""

    head: nn.Module
    load_record: dict[str, Any]
    model_config: Any = None  # etrm's ModelConfig; None for a user's model
    config_file: Path | None = None  # a user's model: the all_config.yaml it was built from
    max_demos: int = 10
    interface: Any = None  # a user's model behind etrm.interface.TRMInterface (etrm's: None, built when needed)


class DataPosition:
    """Endless training batches that know where they are: (sampler iteration, batches
    taken in it), so a resumed run continues with the batch it would have had next.
    Skipping to a position draws the indices only (no batch is assembled)."""

    def __init__(self, dataset, iteration: int = 0, taken: int = 0):
        self.dataset, self.iteration, self.taken = dataset, iteration, taken
        self._indices = dataset._index_batches(iteration)  # noqa: SLF001 - the (seed, iteration) order
        for _ in range(taken):
            if next(self._indices, None) is None:
                raise ValueError(f"{dataset.data_dir}: cannot resume at batch {taken} of sampler iteration {iteration}")

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        drawn = next(self._indices, None)
        if drawn is None:
            if self.taken == 0:
                raise ValueError(f"{self.dataset.data_dir}: the train split gave no complete batch")
            self.iteration, self.taken = self.iteration + 1, 0
            self._indices = self.dataset._index_batches(self.iteration)  # noqa: SLF001
            return next(self)
        self.taken += 1
        return self.dataset._collate(*drawn)  # noqa: SLF001

    def state(self) -> dict[str, int]:
        return {"iteration": self.iteration, "taken": self.taken}


@contextlib.contextmanager
def unwrapped_encoder(head: nn.Module) -> Iterator[nn.Module]:
    """The head with its encoder out of DDP for the duration (nanoGPT's raw_model), so
    what is saved has the model's own keys."""
    from etrm.checkpoints.layouts import unwrap_module

    act = unwrap_module(head).model
    wrapped = getattr(act, "encoder", None)
    if isinstance(wrapped, nn.parallel.DistributedDataParallel):
        act.encoder = wrapped.module
    try:
        yield unwrap_module(head)
    finally:
        if wrapped is not None:
            act.encoder = wrapped


def wrap_encoder(head: nn.Module, processes: Processes) -> None:
    """DDP around the encoder (the part that trains); decoder gradients, when it trains
    too, are summed by the trainer."""
    if processes.world_size == 1:
        return
    act = head.model
    ddp = nn.parallel.DistributedDataParallel(
        act.encoder, device_ids=[processes.device.index] if processes.device.type == "cuda" else None
    )
    ddp.register_comm_hook(None, sum_gradients_hook)
    act.encoder = ddp


def run_experiment(
    build: Callable[[], BuiltModel],
    data_dir: str | Path,
    out: Path | None,
    settings: RunSettings,
    *,
    processes: Processes | None = None,
    metrics_log: Path | None = None,
    frozen: bool = True,
    resume: bool = False,
    compile_model: bool = False,
    progress: bool = True,
    extra_log: Callable[[dict], None] | None = None,
    run_record: dict[str, Any] | None = None,
    eval_extra: Callable[[BuiltModel, nn.Module], dict] | None = None,
):
    """Train and evaluate one run: Experiment 1's only loop, which `etrm experiment1`, the
    suite and the fixture generators all run. The log goes to `metrics_log` (default
    `out/metrics.jsonl`), checkpoints into `out` (none when `out` is None); rank 0 writes.
    `processes` defaults to one process on the CPU. Returns the trainer.
    The test split is evaluated before the first step (the pretrained decoder with the
    untrained encoder), every `settings.interval` steps and after the last.
    `extra_log` also receives every record on rank 0 (W&B). `eval_extra(built, model)`
    adds fields to each evaluation record (the command's context search), `model` being
    the head with its encoder out of DDP."""
    from etrm.data.datasets import FewShotPuzzleDataset, load_metadata
    from etrm.evaluation import ArcEvaluator
    from etrm.inference import evaluate
    from etrm.metrics_log import MetricsLog, eval_record
    from etrm.training import Trainer, TrainingConfig

    if processes is None:
        processes = Processes(0, 1, torch.device("cpu"))
    if out is None and (resume or metrics_log is None):
        raise ValueError("a run without a folder (out=None) needs a metrics_log and cannot resume")
    master, device = processes.master, processes.device
    torch.manual_seed(settings.seed)  # the same model on every rank
    built = build()
    head = built.head.to(device)
    wrap_encoder(head, processes)
    recipe = TrainingConfig(
        lr=settings.lr,
        encoder_lr_scale=settings.encoder_lr_scale,
        warmup_steps=settings.warmup,
        global_batch_size=settings.global_batch_size,
        weight_decay=settings.weight_decay,
        betas=settings.betas,
        lr_min_ratio=settings.lr_min_ratio,
        freeze_decoder_steps=settings.frozen_steps(frozen),
        grad_clip_norm=settings.grad_clip_norm,
        total_steps=settings.steps,
        seed=settings.seed,
    )
    shard = dict(rank=processes.rank, world_size=processes.world_size)
    groups = min(load_metadata(data_dir, "train").total_groups, settings.max_train_groups or math.inf)
    epochs = math.ceil(settings.steps * settings.global_batch_size / max(1, groups)) + 1  # >= one row per group each
    train_set = FewShotPuzzleDataset(
        data_dir,
        "train",
        settings.global_batch_size,
        max_demos=built.max_demos,
        seed=settings.seed,
        epochs=epochs,
        max_groups=groups,
        **shard,
    )
    eval_set = FewShotPuzzleDataset(
        data_dir,
        "test",
        settings.global_batch_size,
        max_demos=built.max_demos,
        test_mode=True,
        max_groups=settings.max_eval_groups,
        **shard,
    )
    evaluator = ArcEvaluator.from_data_dir(data_dir)
    log_path = Path(metrics_log) if metrics_log is not None else out / LOG_NAME
    trainer = Trainer(
        torch.compile(head) if compile_model else head,
        recipe,
        world_size=processes.world_size,
        identifiers=_identifiers(data_dir),
    )
    torch.manual_seed(settings.seed + processes.rank)  # exploration: each rank its own draws

    # What a resumed run must share with the checkpointed one (it may run more steps).
    same_run = {
        **settings.to_dict(),
        "steps": None,
        "checkpoint_every": None,
        "world_size": processes.world_size,
        "frozen": frozen,
    }
    position = {"iteration": 0, "taken": 0}
    if resume:
        state = load_resume_state(out, device)
        check_same_run(out / RESUME_FILE, state["config"], same_run)
        with unwrapped_encoder(head) as raw:
            raw.load_state_dict(state["model"])
        for opt, saved in zip(trainer.optimizers, state["optimizers"]):
            opt.load_state_dict(saved)
        trainer.step_count, position = state["step"], state["data"]
        trainer.carry = state["carry"][processes.rank]
        set_rng_state(state["rng"][processes.rank], device)
        if master:
            cut_log(log_path, trainer.step_count)
    batches = DataPosition(train_set, position["iteration"], position["taken"])

    def write(record: dict) -> None:
        if master:
            log.write(record)
            if extra_log is not None:
                extra_log(record)

    def run_evaluation() -> None:
        started = time.perf_counter()
        # Its own bar: an evaluation (halt_max_steps ACT steps per batch) can outlast many training steps.
        result = evaluate(trainer.eval_head(), eval_set, evaluator, progress=progress and master)
        searched = {}
        if eval_extra is not None:
            with unwrapped_encoder(head) as raw:
                searched = eval_extra(built, raw)
        if result is not None:
            write({**eval_record(trainer.step_count, result), **searched})
        timings.eval_s.append(time.perf_counter() - started)

    timings = Timings()
    log = MetricsLog(log_path, append=resume) if master else None
    try:
        if not resume:
            write(
                {
                    "step": 0,
                    **built.load_record,
                    **(run_record or {}),
                    "run/world_size": processes.world_size,
                    "run/device": str(device),
                }
            )
            run_evaluation()  # the baseline: the pretrained decoder with the untrained encoder
        bar = tqdm(
            total=settings.steps,
            initial=trainer.step_count,
            desc="train",
            unit="step",
            disable=not (progress and master),
            dynamic_ncols=True,
        )
        while trainer.step_count < settings.steps:
            started = time.perf_counter()
            record = trainer.step(next(batches))
            timings.step_s.append(time.perf_counter() - started)
            write(record)
            bar.update(1)
            bar.set_postfix(lm_loss=f"{record['train/lm_loss']:.4f}", refresh=False)
            step = trainer.step_count
            if step % settings.interval == 0 or step == settings.steps:
                run_evaluation()
            due = (settings.checkpoint_every and step % settings.checkpoint_every == 0) or step == settings.steps
            if out is not None and due:
                _checkpoint(out, trainer, built, batches, processes, same_run)
        bar.close()
    finally:
        if log is not None:
            log.close()
        if hasattr(extra_log, "close"):
            extra_log.close()
    trainer.timings = timings
    return trainer


@dataclass
class Timings:
    """Wall-clock seconds of each training step and each evaluation (kept out of the log,
    which must be the same for a resumed run)."""

    step_s: list[float] = field(default_factory=list)
    eval_s: list[float] = field(default_factory=list)

    def summary(self) -> str:
        def mean(values):
            return f"{sum(values) / len(values):.3g} s" if values else "-"

        return (
            f"{len(self.step_s)} steps at {mean(self.step_s)} each, {len(self.eval_s)} evaluations at "
            f"{mean(self.eval_s)} each"
        )


def _checkpoint(
    out: Path, trainer, built: BuiltModel, batches: DataPosition, processes: Processes, config: dict[str, Any]
) -> None:
    """step_N (audit layout) and resume.pt on rank 0, with every rank's carry and RNG."""
    from etrm.experiment1.state import portable

    carries = gather_to_master(portable(trainer.carry), processes)
    rngs = gather_to_master(rng_state(processes.device), processes)
    if processes.master:
        training = {
            "lr": trainer.config.lr,
            "global_batch_size": trainer.config.global_batch_size,
            "freeze_decoder_steps": trainer.config.freeze_decoder_steps,
            "encoder_lr_scale": trainer.config.encoder_lr_scale,
            "seed": trainer.config.seed,
        }
        with unwrapped_encoder(trainer.head) as raw:
            save_weights(
                out,
                trainer.step_count,
                raw,
                model_config=built.model_config,
                training=training,
                config_file=built.config_file,
            )
            save_resume_state(
                out,
                {
                    "model": raw.state_dict(),
                    "optimizers": [o.state_dict() for o in trainer.optimizers],
                    "step": trainer.step_count,
                    "config": config,
                    "data": batches.state(),
                    "carry": carries,
                    "rng": rngs,
                },
            )
    from_master(None, processes)  # no rank runs ahead of a checkpoint being written


def _identifiers(data_dir) -> list[str] | None:
    from etrm.data.datasets import load_identifiers

    try:
        return load_identifiers(data_dir)
    except (OSError, ValueError):
        return None
