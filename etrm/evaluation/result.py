"""What an evaluation round scored (`EvaluationResult`), and the evaluator's error type."""

from __future__ import annotations

from dataclasses import dataclass, field


class EvaluationError(ValueError):
    """Evaluator input is inconsistent or empty; the message names the task, row, file or key."""


@dataclass
class EvaluationResult:
    """What one evaluation round scored.

    ``metrics`` holds ``"ARC/pass@K"`` for every K. ``per_task[task][K]`` is the task's
    score (mean over its test inputs) and ``label_ranks[task][i]`` the 0-based position
    of the correct output among the ranked answers to test input ``i`` (None when it is
    not among them), for every evaluated task. ``denominator`` is the number of tasks the
    metrics average over: ``len(tasks_evaluated)`` unless the evaluator was built with
    the official ``denominator="all_test_tasks"`` policy. ``submission`` is the content
    of ``submission.json``.
    """

    metrics: dict[str, float]
    pass_ks: tuple[int, ...]
    tasks_evaluated: list[str]
    tasks_without_predictions: list[str]
    test_inputs_without_predictions: list[tuple[str, int]]
    per_task: dict[str, dict[int, float]]
    label_ranks: dict[str, list[int | None]]
    num_predictions: int
    denominator: int
    submission: dict[str, list[dict[str, list[list[int]] | None]]] = field(repr=False)

    def summary(self) -> str:
        """Human-readable report: pass@K, the counts, and what was not predicted."""
        lines = [
            f"ARC evaluation: {self.num_predictions} predictions, {len(self.tasks_evaluated)} tasks "
            f"evaluated, metric averaged over {self.denominator} tasks"
        ]
        lines += [f"  pass@{k:<5d} {self.metrics[f'ARC/pass@{k}']:.4f}" for k in self.pass_ks]
        if self.tasks_without_predictions:
            lines.append(
                f"{len(self.tasks_without_predictions)} tasks without predictions (left out of the "
                f"metric): {', '.join(self.tasks_without_predictions)}"
            )
        if self.test_inputs_without_predictions:
            missing = ", ".join(f"{task}[{index}]" for task, index in self.test_inputs_without_predictions)
            lines.append(
                f"{len(self.test_inputs_without_predictions)} test inputs without predictions (scored 0): {missing}"
            )
        return "\n".join(lines)
