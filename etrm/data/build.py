"""Dataset builder: ARC tasks -> the official TRM on-disk layout (DESIGN.md section 5).

Output (``<set>`` is ``all``)::

    <out>/identifiers.json             list; index = puzzle identifier, 0 = "<blank>"
    <out>/test_puzzles.json            {task id: task JSON} of the tasks scored on the test split
    <out>/build_info.json              how the folder was built (etrm only; official readers ignore it)
    <out>/<split>/dataset.json         official metadata (pad/ignore/blank ids, seq_len, counts, sets)
    <out>/<split>/<set>__inputs.npy    (rows, canvas**2) uint8 tokens
    <out>/<split>/<set>__labels.npy    (rows, canvas**2) uint8 tokens (0 = PAD, ignored at batch time)
    <out>/<split>/<set>__puzzle_identifiers.npy  (puzzles,) int32
    <out>/<split>/<set>__puzzle_indices.npy      (puzzles + 1,) int32 row offsets
    <out>/<split>/<set>__group_indices.npy       (groups + 1,) int32 puzzle offsets
    <out>/<split>/<set>__num_demos.npy           (puzzles,) int32, few-shot builds only

A group is one task in one split: its original puzzle first, then its augmentations. A
puzzle's rows are its demos (the task's train pairs) then its queries (its test pairs).

Modes:

- ``trm``: the official split semantics. Training tasks (all pairs) and the evaluation
  tasks' demos go to the train split; the evaluation tasks' test pairs to the test split,
  under the same puzzle names (so TRM's puzzle embeddings learned on the demos serve the
  queries). Train rows are translated by default, as the official builder does.
- ``fewshot``: strict. Training tasks go to the train split, evaluation tasks (demos and
  queries) only to the test split; ``num_demos`` marks where each puzzle's queries begin.

Tasks are ordered by id (the official builder shuffles them; shuffling belongs to the
dataset). Randomness is seeded per task from (seed, task id), augmentations and
translations from separate streams, so builds differ only where they must. A task whose
test outputs are unknown (``allow_missing_solutions`` sources) gets all-PAD label rows,
which are ignored by the loss and cannot be scored.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from etrm.data.grids import (
    BLANK_IDENTIFIER_ID,
    DEFAULT_CANVAS,
    MAX_GRID_SIZE,
    PAD_ID,
    VOCAB_SIZE,
    Augmentation,
    augmentation_name,
    place_grid,
    random_augmentation,
)
from etrm.data.leakage import leakage_report  # noqa: F401 -- re-exported: part of the builder's API
from etrm.data.sources import ARC1_SOURCE, ArcTask, Pair, TaskValidationError, load_tasks

MODES = ("fewshot", "trm")
SET_NAME = "all"
TRAIN_SPLIT, TEST_SPLIT = "train", "test"
BLANK_NAME = "<blank>"
AUGMENT_RETRIES_FACTOR = 5  # official: at most 5N draws to find N distinct augmentations
ARRAY_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
BUILD_INFO = "build_info.json"


@dataclass
class _Puzzle:
    """One group member in one split: the original pairs and the augmentation to apply."""

    name: str
    task_id: str
    pairs: list[Pair]
    aug: Augmentation
    num_demos: int


# --- augmentation plan ----------------------------------------------------------------------
def task_rng(seed: int, task_id: str, stream: int) -> np.random.Generator:
    """Generator for one task and purpose: independent of every other task and of the order."""
    digest = int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest, stream])


def _grid_hash(grid: np.ndarray | None) -> str:
    if grid is None:
        return "none"
    grid = np.ascontiguousarray(grid, dtype=np.uint8)
    return hashlib.sha256(bytes(grid.shape) + grid.tobytes()).hexdigest()


def puzzle_hash(pairs: Iterable[Pair], aug: Augmentation) -> str:
    """Order-free hash of every augmented pair of a task, used to drop duplicate draws."""
    hashes = sorted(
        f"{_grid_hash(aug.apply(inp))}|{_grid_hash(None if out is None else aug.apply(out))}" for inp, out in pairs
    )
    return hashlib.sha256("|".join(hashes).encode()).hexdigest()


def draw_augmentations(task: ArcTask, num_aug: int, seed: int) -> list[Augmentation]:
    """The task's group: the identity, then up to ``num_aug`` distinct random augmentations.

    As the official builder: at most ``5 * num_aug`` draws, and a draw whose whole puzzle
    (every pair of the task) hashes like an earlier member is dropped.
    """
    group = [Augmentation()]
    if num_aug == 0:
        return group
    pairs = task.train + task.test
    rng = task_rng(seed, task.task_id, stream=0)
    seen = {puzzle_hash(pairs, group[0])}
    for _ in range(AUGMENT_RETRIES_FACTOR * num_aug):
        aug = random_augmentation(rng)
        digest = puzzle_hash(pairs, aug)
        if digest not in seen:
            seen.add(digest)
            group.append(aug)
            if len(group) == num_aug + 1:
                break
    return group


def _split_pairs(task: ArcTask, is_eval: bool, mode: str) -> dict[str, tuple[list[Pair], int]]:
    """Pairs (and how many of them are demos) each split receives from a task."""
    if mode == "fewshot":
        return {TEST_SPLIT if is_eval else TRAIN_SPLIT: (task.train + task.test, len(task.train))}
    if is_eval:
        return {TRAIN_SPLIT: (list(task.train), len(task.train)), TEST_SPLIT: (list(task.test), 0)}
    return {TRAIN_SPLIT: (task.train + task.test, len(task.train))}


# --- writing --------------------------------------------------------------------------------
def translation_offsets(
    shapes: Sequence[tuple[tuple[int, int], tuple[int, int]]], canvas: int, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Official translation of one puzzle: every pair but one random one gets a random offset,
    shared by its input and output, that keeps both on the canvas."""
    keep = int(rng.integers(0, len(shapes)))
    offsets = []
    for index, (in_shape, out_shape) in enumerate(shapes):
        if index == keep:
            offsets.append((0, 0))
            continue
        rows, cols = max(in_shape[0], out_shape[0]), max(in_shape[1], out_shape[1])
        offsets.append((int(rng.integers(0, canvas - rows + 1)), int(rng.integers(0, canvas - cols + 1))))
    return offsets


def _encode_puzzle(puzzle: _Puzzle, canvas: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
    grids = [(puzzle.aug.apply(inp), None if out is None else puzzle.aug.apply(out)) for inp, out in puzzle.pairs]
    if rng is None:
        offsets = [(0, 0)] * len(grids)
    else:
        offsets = translation_offsets([(i.shape, i.shape if o is None else o.shape) for i, o in grids], canvas, rng)
    inputs = np.full((len(grids), canvas, canvas), PAD_ID, dtype=np.uint8)
    labels = np.full_like(inputs, PAD_ID)
    for row, ((inp, out), offset) in enumerate(zip(grids, offsets)):
        place_grid(inputs[row], inp, offset)
        if out is not None:
            place_grid(labels[row], out, offset)
    return inputs.reshape(len(grids), -1), labels.reshape(len(grids), -1)


def _open_npy(path: Path, rows: int, width: int):
    """Open ``path`` as a uint8 .npy of known shape whose rows are then appended in order,
    so a split of any size streams to disk instead of being held in memory."""
    handle = open(path, "wb")
    np.lib.format.write_array_header_1_0(
        handle,
        {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (rows, width)},
    )
    return handle


def _write_split(
    split_dir: Path,
    groups: list[list[_Puzzle]],
    identifiers: dict[str, int],
    *,
    canvas: int,
    translate: bool,
    seed: int,
    fewshot: bool,
    num_identifiers: int,
    progress: bool,
) -> dict[str, Any]:
    split_dir.mkdir(parents=True)
    puzzles = [p for group in groups for p in group]
    sizes = np.array([len(p.pairs) for p in puzzles], dtype=np.int64)
    puzzle_indices = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int32)
    group_indices = np.concatenate([[0], np.cumsum([len(g) for g in groups])]).astype(np.int32)
    rows = int(puzzle_indices[-1])
    inputs_file = _open_npy(split_dir / f"{SET_NAME}__inputs.npy", rows, canvas * canvas)
    labels_file = _open_npy(split_dir / f"{SET_NAME}__labels.npy", rows, canvas * canvas)
    with inputs_file, labels_file:
        for group in tqdm(groups, desc=f"writing {split_dir.name}", unit="task", disable=not progress):
            # One translation stream per task and split: independent of the other tasks.
            rng = task_rng(seed, group[0].task_id, stream=1) if translate else None
            for puzzle in group:
                inputs, labels = _encode_puzzle(puzzle, canvas, rng)
                inputs_file.write(inputs.tobytes())
                labels_file.write(labels.tobytes())
    arrays = {
        "puzzle_identifiers": np.array([identifiers[p.name] for p in puzzles], dtype=np.int32),
        "puzzle_indices": puzzle_indices,
        "group_indices": group_indices,
    }
    if fewshot:
        arrays["num_demos"] = np.array([p.num_demos for p in puzzles], dtype=np.int32)
    for field, array in arrays.items():
        np.save(split_dir / f"{SET_NAME}__{field}.npy", array)
    metadata = {
        "pad_id": PAD_ID,
        "ignore_label_id": PAD_ID,  # label PAD is ignored; EOS stays supervised
        "blank_identifier_id": BLANK_IDENTIFIER_ID,
        "vocab_size": VOCAB_SIZE,
        "seq_len": canvas * canvas,
        "num_puzzle_identifiers": num_identifiers,
        "total_groups": len(groups),
        "mean_puzzle_examples": rows / len(puzzles),
        "total_puzzles": len(puzzles),
        "sets": [SET_NAME],
    }
    (split_dir / "dataset.json").write_text(json.dumps(metadata))
    return {"groups": len(groups), "puzzles": len(puzzles), "rows": rows, "translated": translate}


# --- entry point ----------------------------------------------------------------------------
def _select_tasks(
    tasks: dict[str, list[ArcTask]], task_ids: Iterable[str] | None, max_tasks: int | None
) -> dict[str, list[ArcTask]]:
    if task_ids is not None:
        wanted = set(task_ids)
        tasks = {split: [t for t in split_tasks if t.task_id in wanted] for split, split_tasks in tasks.items()}
        missing = sorted(wanted - {t.task_id for split_tasks in tasks.values() for t in split_tasks})
        if missing:
            raise ValueError(f"task id(s) not in the source: {missing}")
    if max_tasks is not None:
        tasks = {split: split_tasks[:max_tasks] for split, split_tasks in tasks.items()}
    return tasks


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to replace it")
        # Overwriting deletes the folder, so only ever delete something that is a built dataset.
        if not ((out / "identifiers.json").is_file() or any(out.glob("*/dataset.json"))):
            raise FileExistsError(
                f"{out} is not empty and does not look like a built dataset "
                f"(no identifiers.json or */dataset.json); refusing to replace it"
            )


def _prepare_out_dir(out: Path, overwrite: bool) -> Path:
    _check_out_dir(out, overwrite)  # again: the folder may have changed while the build ran
    staging = out.with_name(f".{out.name}.building")
    if staging.exists():
        shutil.rmtree(staging)  # left over from an interrupted build of this same folder
    staging.mkdir(parents=True)
    return staging


def build_dataset(
    out_dir: str | Path,
    source: str | Path = ARC1_SOURCE,
    mode: str = "fewshot",
    num_aug: int = 0,
    seed: int = 0,
    max_tasks: int | None = None,
    canvas: int = DEFAULT_CANVAS,
    translate: bool | None = None,
    overwrite: bool = False,
    progress: bool = True,
    *,
    task_ids: Iterable[str] | None = None,
    allow_missing_solutions: bool = False,
) -> Path:
    """Build a dataset folder from an ARC source and return its path (see the module docstring).

    ``max_tasks`` keeps the first N tasks (by id) of each source split; ``task_ids`` keeps
    exactly the named tasks. ``translate`` defaults to on for ``trm`` and off for
    ``fewshot``; it only ever affects the train split. The folder is written under a
    temporary name and moved into place when complete.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    if not isinstance(num_aug, int) or num_aug < 0:
        raise ValueError(f"num_aug must be a non-negative integer, got {num_aug!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if max_tasks is not None and max_tasks < 1:
        raise ValueError(f"max_tasks must be positive, got {max_tasks}")
    if not 1 <= canvas <= MAX_GRID_SIZE:
        raise ValueError(f"canvas must be in 1..{MAX_GRID_SIZE}, got {canvas}")
    translate = (mode == "trm") if translate is None else bool(translate)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)  # before loading and augmenting, which can take minutes
    tasks = _select_tasks(load_tasks(source, allow_missing_solutions=allow_missing_solutions), task_ids, max_tasks)
    for split, split_tasks in tasks.items():
        for task in split_tasks:
            if task.max_side > canvas:
                raise TaskValidationError(
                    f"{split} task {task.task_id}: a grid side of {task.max_side} does not fit "
                    f"the {canvas}x{canvas} canvas"
                )

    groups: dict[str, list[list[_Puzzle]]] = {TRAIN_SPLIT: [], TEST_SPLIT: []}
    ordered = [(task, split == "evaluation") for split in ("training", "evaluation") for task in tasks[split]]
    for task, is_eval in tqdm(ordered, desc="augmenting", unit="task", disable=not progress):
        augs = draw_augmentations(task, num_aug, seed)
        for split, (pairs, num_demos) in _split_pairs(task, is_eval, mode).items():
            groups[split].append(
                [_Puzzle(augmentation_name(task.task_id, aug), task.task_id, pairs, aug, num_demos) for aug in augs]
            )

    # Identifiers in first-seen order over (train, test), as the official builder assigns them.
    identifiers: dict[str, int] = {}
    for split in (TRAIN_SPLIT, TEST_SPLIT):
        for group in groups[split]:
            for puzzle in group:
                identifiers.setdefault(puzzle.name, len(identifiers) + 1)
    num_identifiers = len(identifiers) + 1

    staging = _prepare_out_dir(out, overwrite)
    try:
        splits_info = {}
        for split, split_groups in groups.items():
            if split_groups:  # a source without evaluation tasks has no test split
                splits_info[split] = _write_split(
                    staging / split,
                    split_groups,
                    identifiers,
                    canvas=canvas,
                    seed=seed,
                    progress=progress,
                    translate=translate and split == TRAIN_SPLIT,
                    fewshot=mode == "fewshot",
                    num_identifiers=num_identifiers,
                )
        names = [BLANK_NAME] + list(identifiers)
        (staging / "identifiers.json").write_text(json.dumps(names))
        test_puzzles = {task.task_id: task.to_json() for task in tasks["evaluation"]}
        (staging / "test_puzzles.json").write_text(json.dumps(test_puzzles))
        info = {
            "builder": "etrm",
            "mode": mode,
            "source": str(source),
            "num_aug": num_aug,
            "seed": seed,
            "canvas": canvas,
            "translate": translate,
            "max_tasks": max_tasks,
            "task_ids": None if task_ids is None else sorted(set(task_ids)),
            "tasks": {split: len(t) for split, t in tasks.items()},
            "splits": splits_info,
        }
        (staging / BUILD_INFO).write_text(json.dumps(info, indent=2))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # never leave a half-written folder behind
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return out
