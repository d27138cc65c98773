"""Running a model for evaluation: full ACT episodes over a dataset, scored by an evaluator.

In evaluation mode every sample runs exactly `halt_max_steps` ACT steps (the Q head
does not stop it early), so one episode is `halt_max_steps` calls on the same batch
and the last call's outputs are the answers, as in the official evaluation loop.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from etrm.errors import UsageError, int_at_least

# What an evaluator is given per batch: the answer tokens and the halting confidence.
EVALUATOR_OUTPUT_KEYS = ("preds", "q_halt_logits")


class Evaluator(Protocol):
    """The evaluator interface `evaluate` drives (`etrm.evaluation.ArcEvaluator`)."""

    def begin_round(self) -> None: ...

    def update(self, batch: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> None: ...

    def result(self, save_dir: str | Path | None = None) -> Any: ...


def run_episode(head: nn.Module, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Run `batch` through `halt_max_steps` ACT steps in eval mode, without autograd, and
    return the final step's outputs (logits, preds, q_halt_logits, ...; the encoder's
    context for ETRM models). The head's training/eval mode is restored afterwards."""
    device = next(head.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    max_steps = head.config.halt_max_steps
    was_training = head.training
    head.eval()
    try:
        with torch.inference_mode():
            carry = head.initial_carry(batch)
            for _ in range(max_steps):
                carry, _, _, outputs, all_halted = head(carry, batch)
    finally:
        head.train(was_training)
    if not all_halted:  # eval-mode ACT halts every sample exactly at halt_max_steps
        raise RuntimeError(
            f"after halt_max_steps={max_steps} evaluation steps some samples have not halted "
            f"(steps {carry.steps.tolist()}): the model's evaluation-mode halting is broken"
        )
    return outputs


def evaluate(
    head: nn.Module,
    dataset: Iterable[Mapping[str, torch.Tensor]],
    evaluator: Evaluator,
    *,
    progress: bool = True,
    max_batches: int | None = None,
    save_dir: str | Path | None = None,
) -> Any:
    """Score `head` on every batch of `dataset` (test-mode iteration) with a fresh round of
    `evaluator`; returns `evaluator.result(save_dir)` (an `EvaluationResult`; None on
    distributed ranks other than 0). `max_batches` stops early, for quick checks."""
    if max_batches is not None and max_batches < 1:
        raise ValueError(f"max_batches must be positive or None, got {max_batches}")
    try:
        total = len(dataset)  # type: ignore[arg-type]
    except TypeError:
        total = None
    if max_batches is not None:
        total = max_batches if total is None else min(total, max_batches)
    evaluator.begin_round()
    for batch in tqdm(islice(dataset, max_batches), total=total, desc="evaluate", disable=not progress):
        outputs = run_episode(head, batch)
        evaluator.update(batch, {k: outputs[k].cpu() for k in EVALUATOR_OUTPUT_KEYS})
    return evaluator.result(save_dir)


__all__ = ["EVALUATOR_OUTPUT_KEYS", "Evaluator", "evaluate", "run_episode"]


# --- command line -------------------------------------------------------------------------------


def add_parser(subparsers):
    """Registers `etrm evaluate` and returns its parser (`etrm.evaluate_command` adds the search's flags)."""
    p = subparsers.add_parser(
        "evaluate",
        help="pass@K of a checkpoint on a built dataset's test split",
        description="Run a checkpoint (ours, official or origin layout) over the test split of a "
        "built dataset and score it with the ARC evaluator (mean over the tasks that "
        "received predictions; tasks left out are listed).",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint file (all_config.yaml or etrm metadata beside it)")
    p.add_argument("--data", required=True, help="built dataset folder (official layout)")
    p.add_argument(
        "--max-eval-groups",
        type=int_at_least(1),
        default=None,
        metavar="N",
        help="evaluate only the first N tasks (all augmentations)",
    )
    p.add_argument("--batch-size", type=int_at_least(1), default=16)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--save-dir", default=None, help="write submission.json here")
    p.set_defaults(func=_evaluate_command)
    return p


def _evaluate_command(args) -> int:
    from etrm.checkpoints import load_model
    from etrm.data.datasets import DatasetFormatError, FewShotPuzzleDataset, PuzzleDataset
    from etrm.evaluation import ArcEvaluator

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda but CUDA is not available to this torch build")
    # A bad checkpoint or dataset raises; etrm.cli.main prints it as one line.
    head = load_model(args.checkpoint).to(args.device)
    config = head.config
    options = dict(test_mode=True, max_groups=args.max_eval_groups)
    dataset = (
        FewShotPuzzleDataset(args.data, "test", args.batch_size, max_demos=config.max_demos, **options)
        if config.uses_encoder
        else PuzzleDataset(args.data, "test", args.batch_size, **options)
    )
    if dataset.metadata.seq_len != config.seq_len:
        raise DatasetFormatError(
            f"{args.data}: seq_len {dataset.metadata.seq_len}, but the checkpoint's model expects {config.seq_len}"
        )
    result = evaluate(
        head, _to_device(dataset, args.device), ArcEvaluator.from_data_dir(args.data), save_dir=args.save_dir
    )
    print(result.summary())
    return 0


class _to_device:
    """A dataset view whose batches are moved to `device` (the evaluator gets CPU outputs back)."""

    def __init__(self, dataset, device: str):
        self.dataset, self.device = dataset, device

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        for batch in self.dataset:
            yield {k: v.to(self.device) for k, v in batch.items()}
