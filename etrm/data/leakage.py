"""Train/test leakage by content hash, with provenance (DESIGN.md section 5).

Every grid and every (input, output) pair on each side is hashed after undoing the
augmentation named by its puzzle (and cropping at its translation offset), so an
augmented or translated copy hashes like its original. An overlap is content found on
both sides; it is a *leak* when it comes from the same task on both sides, and a
*coincidence* when different tasks happen to share it (ARC-AGI-1 has a few dozen grids
and 3 whole pairs shared by a training and an evaluation task). Independently of content,
a task that names puzzles on both sides is reported as leaking: in a strict few-shot
build no example of an evaluation task may sit in the train split under its name.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from etrm.data.grids import COLOR_OFFSET, NUM_COLORS, decode_grid, parse_augmentation_name
from etrm.data.layout import load_identifiers, load_split
from etrm.data.sources import ArcTask

_SHOWN = 20  # lines per section in summary()

# (puzzle name, input grid, output grid or None when unknown)
Item = tuple[str, np.ndarray, "np.ndarray | None"]


def _digest(*grids: np.ndarray) -> str:
    h = hashlib.sha256()
    for grid in grids:
        grid = np.ascontiguousarray(grid, dtype=np.uint8)
        h.update(bytes(grid.shape) + grid.tobytes())
    return h.hexdigest()


def base_task(name: str) -> str:
    return parse_augmentation_name(name)[0]


@dataclass(frozen=True)
class Overlap:
    """One grid or pair found on both sides, with the puzzles it comes from."""

    kind: str  # "grid" or "pair"
    digest: str
    train_names: tuple[str, ...]
    test_names: tuple[str, ...]

    @property
    def train_tasks(self) -> tuple[str, ...]:
        return tuple(sorted({base_task(n) for n in self.train_names}))

    @property
    def test_tasks(self) -> tuple[str, ...]:
        return tuple(sorted({base_task(n) for n in self.test_names}))

    @property
    def is_leak(self) -> bool:
        return bool(set(self.train_tasks) & set(self.test_tasks))


@dataclass(frozen=True)
class Leak:
    """A test-side task that also names puzzles on the train side."""

    task_id: str
    train_names: tuple[str, ...]
    overlaps: tuple[Overlap, ...]  # this task's content found on both sides


@dataclass
class LeakageReport:
    train_label: str
    test_label: str
    overlaps: list[Overlap]
    leaks: list[Leak]
    unhashed_rows: int = 0  # rows without a decodable input grid (left out, counted here)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def coincidences(self) -> list[Overlap]:
        return [o for o in self.overlaps if not o.is_leak]

    def of_kind(self, kind: str) -> list[Overlap]:
        return [o for o in self.overlaps if o.kind == kind]

    @property
    def is_clean(self) -> bool:
        return not self.leaks

    def summary(self) -> str:
        lines = [
            f"leakage report: {self.train_label} vs {self.test_label} "
            f"({', '.join(f'{k} {v}' for k, v in self.counts.items())})"
        ]
        if self.leaks:
            lines.append(
                f"LEAKS: {len(self.leaks)} task(s) of {self.test_label} have examples in "
                f"{self.train_label} under their own name"
            )
            for leak in self.leaks[:_SHOWN]:
                kinds = {k: sum(o.kind == k for o in leak.overlaps) for k in ("grid", "pair")}
                lines.append(
                    f"  {leak.task_id}: {len(leak.train_names)} train puzzle(s) "
                    f"[{_names(leak.train_names)}], shared content: {kinds['grid']} grid(s), "
                    f"{kinds['pair']} pair(s)"
                )
            lines += _more(len(self.leaks))
        else:
            lines.append(f"no leaks: no task of {self.test_label} names a puzzle in {self.train_label}")
        lines.append(
            f"content overlaps: {len(self.of_kind('grid'))} grid(s), {len(self.of_kind('pair'))} pair(s); "
            f"{len(self.coincidences)} coincidence(s) between different tasks:"
        )
        for overlap in self.coincidences[:_SHOWN]:
            lines.append(
                f"  {overlap.kind} {overlap.digest[:12]}: {self.train_label} [{_names(overlap.train_tasks)}]"
                f" | {self.test_label} [{_names(overlap.test_tasks)}]"
            )
        lines += _more(len(self.coincidences))
        if self.unhashed_rows:
            lines.append(f"{self.unhashed_rows} row(s) had no decodable input grid and were not hashed")
        return "\n".join(lines)


def _names(names: Iterable[str], shown: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:shown]) + (f" (+{len(names) - shown})" if len(names) > shown else "")


def _more(total: int) -> list[str]:
    return [f"  ... and {total - _SHOWN} more"] if total > _SHOWN else []


class _Index:
    """Content digests of one side, each with the puzzle names it occurs under."""

    def __init__(self) -> None:
        self.grids: dict[str, set[str]] = defaultdict(set)
        self.pairs: dict[str, set[str]] = defaultdict(set)
        self.names: set[str] = set()

    def add(self, items: Iterable[Item]) -> None:
        for name, inp, out in items:
            self.names.add(name)
            self.grids[_digest(inp)].add(name)
            if out is not None:
                self.grids[_digest(out)].add(name)
                self.pairs[_digest(inp, out)].add(name)


def _compare(
    train: _Index, test: _Index, train_label: str, test_label: str, unhashed: int, counts: dict[str, int]
) -> LeakageReport:
    sides = (("grid", train.grids, test.grids), ("pair", train.pairs, test.pairs))
    overlaps = [
        Overlap(kind, digest, tuple(sorted(train_side[digest])), tuple(sorted(test_side[digest])))
        for kind, train_side, test_side in sides
        for digest in sorted(train_side.keys() & test_side.keys())
    ]
    train_by_task: dict[str, list[str]] = defaultdict(list)
    for name in sorted(train.names):
        train_by_task[base_task(name)].append(name)
    shared = sorted(train_by_task.keys() & {base_task(n) for n in test.names})
    leaks = [
        Leak(
            task,
            tuple(train_by_task[task]),
            tuple(o for o in overlaps if task in o.train_tasks and task in o.test_tasks),
        )
        for task in shared
    ]
    return LeakageReport(train_label, test_label, overlaps, leaks, unhashed, counts)


# --- built datasets -----------------------------------------------------------------------
def _offset(tokens: np.ndarray) -> tuple[int, int] | None:
    """Top-left corner of the grid on a (canvas, canvas) token array (translated rows)."""
    colour = (tokens >= COLOR_OFFSET) & (tokens < COLOR_OFFSET + NUM_COLORS)
    rows, cols = colour.any(axis=1), colour.any(axis=0)
    if not rows.any():
        return None
    return int(rows.argmax()), int(cols.argmax())


def _dataset_items(data_dir: Path, split: str, names: list[str], counter: list[int], progress: bool) -> Iterator[Item]:
    metadata, sets = load_split(data_dir, split)
    canvas = int(round(np.sqrt(metadata.seq_len)))
    for arrays in sets:
        puzzles = tqdm(
            enumerate(arrays.puzzle_identifiers),
            total=len(arrays.puzzle_identifiers),
            desc=f"hashing {split}",
            unit="puzzle",
            disable=not progress,
        )
        for puzzle, identifier in puzzles:
            name = names[int(identifier)]
            aug = parse_augmentation_name(name)[1]
            lo, hi = int(arrays.puzzle_indices[puzzle]), int(arrays.puzzle_indices[puzzle + 1])
            inputs = np.asarray(arrays.inputs[lo:hi]).reshape(-1, canvas, canvas)
            labels = np.asarray(arrays.labels[lo:hi]).reshape(-1, canvas, canvas)
            for tokens_in, tokens_out in zip(inputs, labels):
                offset = _offset(tokens_in)
                if offset is None:
                    counter[0] += 1
                    continue
                out = decode_grid(tokens_out, offset=offset)
                yield name, aug.invert(decode_grid(tokens_in, offset=offset)), aug.invert(out) if out.size else None


def leakage_report(
    data_dir: str | Path, train_split: str = "train", test_split: str = "test", progress: bool = False
) -> LeakageReport:
    """Overlap between two splits of a built dataset, by content and by task name."""
    data_dir = Path(data_dir)
    names = load_identifiers(data_dir)
    unhashed = [0]
    indexes = {}
    for split in (train_split, test_split):
        indexes[split] = _Index()
        indexes[split].add(_dataset_items(data_dir, split, names, unhashed, progress))
    counts = {f"{split} puzzles": len(index.names) for split, index in indexes.items()}
    return _compare(
        indexes[train_split],
        indexes[test_split],
        f"{data_dir.name}/{train_split}",
        f"{data_dir.name}/{test_split}",
        unhashed[0],
        counts,
    )


# --- raw sources ----------------------------------------------------------------------------
def _task_items(tasks: Iterable[ArcTask]) -> Iterator[Item]:
    for task in tasks:
        for inp, out in task.train + task.test:
            yield task.task_id, inp, out


def source_overlap_report(
    tasks: dict[str, list[ArcTask]], train_split: str = "training", test_split: str = "evaluation"
) -> LeakageReport:
    """The same report on a loaded source (``load_tasks``), before any build."""
    indexes = {}
    for split in (train_split, test_split):
        indexes[split] = _Index()
        indexes[split].add(_task_items(tasks[split]))
    counts = {f"{split} tasks": len(tasks[split]) for split in (train_split, test_split)}
    return _compare(indexes[train_split], indexes[test_split], train_split, test_split, 0, counts)
