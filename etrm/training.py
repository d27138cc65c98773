"""The training step (DESIGN.md section 7): one ACT step per batch, official recipe.

`Trainer.step(batch)` runs one ACT step of `LossHead` on the batch with the carry kept
from the previous call (halted slots take the new batch's samples, the others keep
their own), divides the summed loss by the *global* batch size before backward,
measures gradient norms per part before and after optional clipping, applies
AdamATan2 (and sparse sign-SGD for a TRM puzzle embedding) with the scheduled
learning rates, updates the EMA, and writes one JSON line of metrics.

Parts are modules: `model.encoder.*` is the encoder, `model.inner.*` the decoder
(including a TRM puzzle embedding). Freezing a part for N steps turns off its
`requires_grad` and discards any gradient it got, so the optimizers, which skip
parameters without a gradient, neither update nor decay it, in either optimizer layout.
The investigation's mistakes this module rules out: gradient norms read after clipping
(its "1.0" was the clip threshold), and a frozen decoder that still moved.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from etrm.config import ConfigError
from etrm.config.training import OPTIMIZER_LAYOUTS, TrainingConfig, official_trm_recipe
from etrm.diagnostics import DIAGNOSTIC_KEYS, encoder_diagnostics

# The log's writer and reader live in etrm.metrics_log and the settings in etrm.config.training;
# re-exported here, where the trainer's users look.
from etrm.metrics_log import MetricsLog, MetricsLogError, eval_record, read_metrics_log
from etrm.optim import AdamATan2, SparseSignSGD, lr_schedule

PARTS = ("encoder", "decoder")
_PART_PREFIXES = {"model.encoder.": "encoder", "model.inner.": "decoder"}
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")
# Loss-head metric sums divided by the global batch size; the others by the halted count.
_LOSS_METRICS = ("lm_loss", "q_halt_loss", "kl_loss")
_COUNT_METRICS = ("accuracy", "exact_accuracy", "q_halt_accuracy", "steps")


def parameter_part(name: str) -> str:
    """'encoder' or 'decoder' for a parameter name of a LossHead (wrapper prefixes allowed)."""
    bare = name
    stripped = True
    while stripped:
        stripped = False
        for prefix in _WRAPPER_PREFIXES:
            if bare.startswith(prefix):
                bare, stripped = bare[len(prefix) :], True
    for prefix, part in _PART_PREFIXES.items():
        if bare.startswith(prefix):
            return part
    raise ValueError(
        f"parameter {name!r} belongs to neither model.encoder.* nor model.inner.*: "
        f"the trainer cannot tell which part it trains, freezes or measures"
    )


# --- trainer ---------------------------------------------------------------------------------


class Trainer:
    """Trains a `LossHead` one ACT step per `step(batch)` call.

    `world_size > 1` needs an initialised `torch.distributed` group: gradients and metric
    sums are all-reduced (summed) and every rank passes its `global_batch_size / world_size`
    rows. `identifiers` (the dataset's identifier names) enable `encoder/within_task_std`.
    Seeds torch's global generator with `config.seed` (ACT exploration draws from it).
    """

    def __init__(
        self,
        head: nn.Module,
        config: TrainingConfig,
        *,
        metrics_log: MetricsLog | str | Path | None = None,
        world_size: int = 1,
        identifiers: Sequence[str] | None = None,
    ):
        if world_size < 1 or config.global_batch_size % world_size:
            raise ConfigError(
                f"global_batch_size {config.global_batch_size} must split evenly over world_size {world_size}"
            )
        if world_size > 1 and not dist.is_initialized():
            raise RuntimeError(f"world_size {world_size} needs an initialised torch.distributed process group")
        self.head = head
        self.config = config
        self.world_size = world_size
        self.identifiers = identifiers
        self.metrics_log = MetricsLog(metrics_log) if isinstance(metrics_log, (str, Path)) else metrics_log
        self.step_count = 0  # optimizer updates done; step() performs update number step_count + 1
        self.carry = None

        act = getattr(head, "_orig_mod", head).model
        self.named_params: dict[str, list[tuple[str, nn.Parameter]]] = {part: [] for part in PARTS}
        for name, param in head.named_parameters():
            self.named_params[parameter_part(name)].append((name, param))
        self.has_encoder = bool(self.named_params["encoder"])
        if config.freeze_encoder_steps and not self.has_encoder:
            raise ConfigError(
                f"freeze_encoder_steps {config.freeze_encoder_steps}: {type(act).__name__} has no encoder"
            )
        self._trainable = {id(p): p.requires_grad for _, p in head.named_parameters()}  # restored on unfreeze
        self._freeze_encoder = getattr(act, "freeze_encoder", None)  # ETRM: also skips autograd in the encoder
        self._encoder_frozen_by_user = bool(getattr(act, "encoder_frozen", False))

        torch.manual_seed(config.seed)
        self.optimizers = self._build_optimizers(act)
        self.ema = self._build_ema()

    # --- setup -------------------------------------------------------------------------------
    def _build_optimizers(self, act: nn.Module) -> list[torch.optim.Optimizer]:
        cfg = self.config
        groups = []
        for part, lr, wd in (
            ("decoder", cfg.lr, cfg.weight_decay),
            ("encoder", cfg.encoder_lr, cfg.encoder_weight_decay),
        ):
            params = [p for _, p in self.named_params[part]]
            if params:  # "base_lr" is what the schedule scales; "part" names the group in logs and checks
                groups.append(dict(params=params, lr=lr, base_lr=lr, weight_decay=wd, part=part))
        if cfg.optimizer_layout == "single":
            optimizers: list[torch.optim.Optimizer] = [AdamATan2(groups, lr=cfg.lr, betas=cfg.betas)]
        else:
            optimizers = [AdamATan2([group], lr=group["lr"], betas=cfg.betas) for group in groups]
        puzzle_emb = getattr(act.inner, "puzzle_emb", None)
        if puzzle_emb is not None:
            sign_sgd = SparseSignSGD(
                puzzle_emb, lr=cfg.puzzle_emb_lr, weight_decay=cfg.puzzle_emb_weight_decay, world_size=self.world_size
            )
            sign_sgd.param_groups[0].update(base_lr=cfg.puzzle_emb_lr, part="puzzle_emb")
            optimizers.append(sign_sgd)
        return optimizers

    def _build_ema(self):
        if self.config.ema_rate is None:
            return None
        from etrm.ema import EMA

        ema = EMA(self.head, self.config.ema_rate)
        ema.register()  # the shadow starts at the weights the trainer was given (pretrained or fresh)
        return ema

    # --- freezing ----------------------------------------------------------------------------
    def frozen_parts(self, step: int) -> frozenset[str]:
        """Parts frozen during update number `step` (1-based): the first N steps of each."""
        frozen = set()
        if step <= self.config.freeze_decoder_steps:
            frozen.add("decoder")
        if step <= self.config.freeze_encoder_steps:
            frozen.add("encoder")
        return frozenset(frozen)

    def _set_trainable(self, frozen: frozenset[str]) -> None:
        if self._freeze_encoder is not None:  # first: it sets every encoder parameter's requires_grad
            self._freeze_encoder(self._encoder_frozen_by_user or "encoder" in frozen)
        for part in PARTS:
            for _, p in self.named_params[part]:
                p.requires_grad_(self._trainable[id(p)] and part not in frozen)

    def _discard_frozen_grads(self, frozen: frozenset[str]) -> None:
        # A zero gradient is not enough: AdamATan2 would still decay the parameter.
        for part in frozen:
            for _, p in self.named_params[part]:
                p.grad = None

    # --- gradients ---------------------------------------------------------------------------
    def grad_norms(self) -> dict[str, torch.Tensor]:
        """L2 norm of the current gradients per part and in total (0 for a part without any)."""
        squares = {}
        for part in PARTS:
            grads = [p.grad for _, p in self.named_params[part] if p.grad is not None]
            squares[part] = (
                (torch.stack([torch.linalg.vector_norm(g.float()) for g in grads]) ** 2).sum()
                if grads
                else torch.zeros(())
            )
        norms = {part: value.sqrt() for part, value in squares.items()}
        norms["total"] = (squares["encoder"].to(norms["decoder"].device) + squares["decoder"]).sqrt()
        return norms

    def _clip_and_measure(self) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(norms before clipping, norms after): the pre-clip values are the ones that say
        how large the gradient was; after clipping the total is at most the threshold."""
        pre = self.grad_norms()
        if self.config.grad_clip_norm is None:
            return pre, pre
        params = [p for part in PARTS for _, p in self.named_params[part] if p.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip_norm)
        return pre, self.grad_norms()

    # --- the step ----------------------------------------------------------------------------
    def learning_rates(self, step: int) -> dict[str, float]:
        """Scheduled lr per part ('decoder', 'encoder', 'puzzle_emb') for update number `step`."""
        cfg = self.config
        return {
            group["part"]: lr_schedule(step, group["base_lr"], cfg.warmup_steps, cfg.total_steps, cfg.lr_min_ratio)
            for opt in self.optimizers
            for group in opt.param_groups
        }

    def step(self, batch: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """One ACT step and optimizer update on `batch`; returns (and logs) its metrics."""
        step = self.step_count + 1
        device = next(self.head.parameters()).device
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        rows = batch["inputs"].shape[0]
        local = self.config.global_batch_size // self.world_size
        if rows != local:
            raise ValueError(
                f"step {step}: batch has {rows} rows, but global_batch_size "
                f"{self.config.global_batch_size} / world_size {self.world_size} = {local}; the loss "
                f"would be scaled by the wrong batch size"
            )

        frozen = self.frozen_parts(step)
        self._set_trainable(frozen)
        self.head.train()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.carry is None:
            self.carry = self.head.initial_carry(batch)
        self.carry, loss, metrics, outputs, _ = self.head(self.carry, batch)
        scaled = loss / self.config.global_batch_size
        if scaled.requires_grad:  # False only when every part is frozen
            scaled.backward()
        self._discard_frozen_grads(frozen)
        if self.world_size > 1:
            self._all_reduce_grads()
        pre, post = self._clip_and_measure()

        lrs = self.learning_rates(step)
        for opt in self.optimizers:
            for group in opt.param_groups:
                group["lr"] = lrs[group["part"]]
            if not (isinstance(opt, SparseSignSGD) and "decoder" in frozen):  # the embedding belongs to the decoder
                opt.step()
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        self.step_count = step

        record = self._record(step, loss, metrics, outputs, pre, post, lrs, frozen)
        if self.metrics_log is not None:
            self.metrics_log.write(record)
        return record

    def _all_reduce_grads(self) -> None:
        # Parameters inside a DistributedDataParallel module were summed by its hook already.
        ddp = {
            id(p)
            for m in self.head.modules()
            if isinstance(m, nn.parallel.DistributedDataParallel)
            for p in m.parameters()
        }
        for part in PARTS:
            for _, p in self.named_params[part]:
                if p.grad is not None and id(p) not in ddp:
                    dist.all_reduce(p.grad)

    def _record(
        self,
        step: int,
        loss: torch.Tensor,
        metrics: dict[str, torch.Tensor],
        outputs: dict[str, torch.Tensor],
        pre: dict[str, torch.Tensor],
        post: dict[str, torch.Tensor],
        lrs: dict[str, float],
        frozen: frozenset[str],
    ) -> dict[str, Any]:
        metrics = {**metrics, "loss": loss.detach()}
        metrics.setdefault("kl_loss", torch.zeros((), device=loss.device))
        names = sorted(metrics)  # the same order on every rank
        sums = torch.stack([metrics[k].to(torch.float64) for k in names])
        if self.world_size > 1:
            dist.all_reduce(sums)
        norm_parts = [p for p in ("encoder", "decoder", "total") if p != "encoder" or self.has_encoder]
        norms = torch.stack([d[p].float().to(sums.device) for d in (pre, post) for p in norm_parts])
        values = dict(zip(names, sums.tolist()))
        norm_values = norms.tolist()  # one device sync for all numbers

        count = values["count"]
        record: dict[str, Any] = {"step": step, "train/loss": values["loss"] / self.config.global_batch_size}
        for key in _LOSS_METRICS:
            record[f"train/{key}"] = values[key] / self.config.global_batch_size
        for key in _COUNT_METRICS:
            record[f"train/{key}"] = values[key] / count if count > 0 else math.nan
        record["train/count"] = count
        for i, (stage, part) in enumerate((s, p) for s in ("preclip", "postclip") for p in norm_parts):
            record[f"grad/{part}_norm_{stage}"] = norm_values[i]
        if "context" in outputs:  # over the global batch: every rank's rows, in rank order
            context, ids = outputs["context"], self.carry.current_data["puzzle_identifiers"]
            if self.world_size > 1:
                context, ids = _gather_rows(context, self.world_size), _gather_rows(ids, self.world_size)
            diagnostics = encoder_diagnostics(context, ids, self.identifiers)
            record.update({f"encoder/{k}": diagnostics[k] for k in DIAGNOSTIC_KEYS})
        record["lr"] = lrs["decoder"]
        if "encoder" in lrs:
            record["lr/encoder"] = lrs["encoder"]
        if "puzzle_emb" in lrs:
            record["lr/puzzle_emb"] = lrs["puzzle_emb"]
        for part in PARTS if self.has_encoder else ("decoder",):
            record[f"frozen/{part}"] = float(part in frozen)
        return record

    # --- evaluation support --------------------------------------------------------------------
    def eval_head(self) -> nn.Module:
        """The model to evaluate: the EMA copy when EMA is on (as the official trainer), else the head."""
        return self.ema.ema_copy() if self.ema is not None else self.head

    def log_eval(self, result: Any) -> dict[str, Any]:
        """Log an `EvaluationResult` as an `eval/*` record at the current step."""
        record = eval_record(self.step_count, result)
        if self.metrics_log is not None:
            self.metrics_log.write(record)
        return record


def _gather_rows(tensor: torch.Tensor, world_size: int) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _cycle(dataset: Iterable[Mapping[str, torch.Tensor]]) -> Iterator[Mapping[str, torch.Tensor]]:
    while True:
        empty = True
        for batch in dataset:
            empty = False
            yield batch
        if empty:
            raise ValueError(f"{type(dataset).__name__} yielded no batch: nothing to train on")


def _dataset_identifiers(dataset: Any) -> list[str] | None:
    data_dir = getattr(dataset, "data_dir", None)
    if data_dir is None:
        return None
    from etrm.data.datasets import load_identifiers

    return load_identifiers(data_dir)


def train(
    head: nn.Module,
    dataset: Iterable[Mapping[str, torch.Tensor]],
    config: TrainingConfig,
    *,
    steps: int,
    metrics_log: MetricsLog | str | Path | None = None,
    eval_every: int | None = None,
    eval_dataset: Iterable[Mapping[str, torch.Tensor]] | None = None,
    evaluator: Any = None,
    progress: bool = True,
) -> Trainer:
    """Train for `steps` updates, re-iterating `dataset` as often as needed, evaluating
    (the EMA copy, if any) every `eval_every` steps. Returns the trainer (its `step_count`,
    `carry`, `optimizers`, `ema`); the numbers are in the metrics log."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    if eval_every is not None and (eval_every < 1 or eval_dataset is None or evaluator is None):
        raise ValueError("eval_every needs a positive interval, an eval_dataset and an evaluator")
    from etrm.inference import evaluate

    trainer = Trainer(head, config, metrics_log=metrics_log, identifiers=_dataset_identifiers(dataset))
    batches = _cycle(dataset)
    bar = tqdm(range(steps), desc="train", disable=not progress)
    for _ in bar:
        record = trainer.step(next(batches))
        bar.set_postfix(lm_loss=f"{record['train/lm_loss']:.4f}", refresh=False)
        if eval_every is not None and trainer.step_count % eval_every == 0:
            result = evaluate(trainer.eval_head(), eval_dataset, evaluator, progress=False)
            if result is not None:  # None on ranks other than 0
                trainer.log_eval(result)
    return trainer


__all__ = [
    "MetricsLog",
    "MetricsLogError",
    "OPTIMIZER_LAYOUTS",
    "PARTS",
    "Trainer",
    "TrainingConfig",
    "official_trm_recipe",
    "parameter_part",
    "read_metrics_log",
    "train",
]
