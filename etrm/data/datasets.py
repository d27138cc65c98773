"""Datasets over built folders (ours or the official builder's): TRM rows and few-shot episodes.

``PuzzleDataset`` yields TRM batches (``inputs``, ``labels``, ``puzzle_identifiers``);
``FewShotPuzzleDataset`` adds each query's demonstrations (``demo_inputs``,
``demo_labels``, ``demo_mask``) and needs a few-shot build (``<set>__num_demos.npy``).

Which rows are used:

- A puzzle's rows are its demos (index < ``num_demos``) then its queries. Without
  ``num_demos`` (the official layout) every row is a query.
- Test iteration: every query row of every puzzle, in order, for both classes (so they
  agree row for row); the last batch is padded with blank-identifier rows whose labels
  are all ignored.
- Training iteration: per epoch a shuffled order of whole task groups; per group one
  random puzzle (augmentation), whose rows are shuffled and packed into fixed-size global
  batches; an incomplete last batch is dropped (the official sampler). ``PuzzleDataset``
  trains on all of a puzzle's rows, demos included, as the official TRM trainer does;
  ``FewShotPuzzleDataset`` trains on query rows, each with its puzzle's first
  ``max_demos`` demos.

``batch_size`` is the global batch: rank ``r`` of ``world_size`` receives rows
``[r * B/ws, (r + 1) * B/ws)`` of each global batch. Each ``iter()`` starts a new
iteration whose order is drawn from ``(seed, iteration number)``, so equal arguments give
equal batches. Token arrays are memory-mapped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from etrm.data.grids import IGNORE_LABEL_ID

# The layout readers are part of this module's API: datasets are where users look for them.
from etrm.data.layout import (
    DatasetFormatError,
    DatasetMetadata,
    SetArrays,
    load_identifiers,
    load_metadata,
    load_split,
    load_test_puzzles,
)

__all__ = [
    "PuzzleDataset",
    "FewShotPuzzleDataset",
    "fewshot_batch",
    "DatasetFormatError",
    "DatasetMetadata",
    "SetArrays",
    "load_identifiers",
    "load_metadata",
    "load_split",
    "load_test_puzzles",
]


class PuzzleDataset(IterableDataset):
    """TRM batches: ``inputs`` (B, S) int32, ``labels`` (B, S) int64 (PAD -> -100),
    ``puzzle_identifiers`` (B,) int32. See the module docstring for the sampling rules."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        *,
        seed: int = 0,
        test_mode: bool = False,
        rank: int = 0,
        world_size: int = 1,
        max_groups: int | None = None,
        epochs: int = 1,
    ) -> None:
        super().__init__()
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size={batch_size}, "
                f"rank={rank}, world_size={world_size}"
            )
        if batch_size % world_size:
            raise ValueError(f"global batch size {batch_size} is not divisible by world_size {world_size}")
        if epochs < 1 or (max_groups is not None and max_groups < 1):
            raise ValueError(f"epochs and max_groups must be positive, got {epochs}, {max_groups}")
        self.data_dir = Path(data_dir)
        self.split = split
        self.batch_size = batch_size
        self.local_batch_size = batch_size // world_size
        self.seed, self.test_mode, self.rank, self.world_size, self.epochs = seed, test_mode, rank, world_size, epochs
        self.metadata, sets = load_split(data_dir, split)
        self.sets = [s.limit_groups(max_groups) for s in sets]
        self._iteration = 0

    # --- which rows ------------------------------------------------------------------------
    def _ranges(self, arrays: SetArrays) -> tuple[np.ndarray, np.ndarray]:
        """(first row, row count) per puzzle that this dataset iterates."""
        return arrays.query_ranges() if self.test_mode else arrays.all_ranges()

    # --- index sampling ---------------------------------------------------------------------
    def _index_batches(self, iteration: int) -> Iterator[tuple[SetArrays, np.ndarray, np.ndarray]]:
        """(set, row indices, puzzle indices) of this rank's batches; -1 marks padding."""
        rng = np.random.default_rng([self.seed, iteration])
        for arrays in self.sets:
            starts, counts = self._ranges(arrays)
            batches = (
                self._test_batches(starts, counts)
                if self.test_mode
                else self._train_batches(rng, arrays.group_indices, starts, counts)
            )
            lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
            for rows, puzzles in batches:
                rows, puzzles = rows[lo:hi], puzzles[lo:hi]
                pad = self.local_batch_size - len(rows)
                yield arrays, np.pad(rows, (0, pad), constant_values=-1), np.pad(puzzles, (0, pad), constant_values=-1)

    def _test_batches(self, starts: np.ndarray, counts: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        puzzles = np.repeat(np.arange(len(counts)), counts)
        # Row = its puzzle's start + its position within the puzzle.
        rows = starts[puzzles] + np.arange(len(puzzles)) - np.repeat(np.cumsum(counts) - counts, counts)
        for begin in range(0, len(rows), self.batch_size):
            yield rows[begin : begin + self.batch_size], puzzles[begin : begin + self.batch_size]

    def _train_batches(
        self, rng: np.random.Generator, group_indices: np.ndarray, starts: np.ndarray, counts: np.ndarray
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        num_groups = len(group_indices) - 1
        order = np.concatenate([rng.permutation(num_groups) for _ in range(self.epochs)])
        rows: list[np.ndarray] = []
        puzzles: list[np.ndarray] = []
        filled = 0
        for group in order:
            puzzle = int(rng.integers(group_indices[group], group_indices[group + 1]))
            take = min(int(counts[puzzle]), self.batch_size - filled)
            if take == 0:
                continue
            rows.append(starts[puzzle] + rng.permutation(int(counts[puzzle]))[:take])
            puzzles.append(np.full(take, puzzle))
            filled += take
            if filled == self.batch_size:
                yield np.concatenate(rows), np.concatenate(puzzles)
                rows, puzzles, filled = [], [], 0
        # An incomplete last batch is dropped, as the official sampler does.

    # --- batches -----------------------------------------------------------------------------
    def _collate(self, arrays: SetArrays, rows: np.ndarray, puzzles: np.ndarray) -> dict[str, torch.Tensor]:
        meta = self.metadata
        valid = rows >= 0
        inputs = np.full((len(rows), meta.seq_len), meta.pad_id, dtype=np.int32)
        labels = np.full((len(rows), meta.seq_len), IGNORE_LABEL_ID, dtype=np.int64)
        inputs[valid] = arrays.inputs[rows[valid]]
        raw = arrays.labels[rows[valid]].astype(np.int64)
        if meta.ignore_label_id is not None:
            raw[raw == meta.ignore_label_id] = IGNORE_LABEL_ID
        labels[valid] = raw
        identifiers = np.full(len(rows), meta.blank_identifier_id, dtype=np.int32)
        identifiers[valid] = arrays.puzzle_identifiers[puzzles[valid]]
        return {
            "inputs": torch.from_numpy(inputs),
            "labels": torch.from_numpy(labels),
            "puzzle_identifiers": torch.from_numpy(identifiers),
        }

    def _batches(self, iteration: int) -> Iterator[dict[str, torch.Tensor]]:
        for arrays, rows, puzzles in self._index_batches(iteration):
            yield self._collate(arrays, rows, puzzles)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise RuntimeError("multi-worker loading would repeat batches; shard with rank/world_size instead")
        iteration, self._iteration = self._iteration, self._iteration + 1
        return self._batches(iteration)

    def first_batch(self) -> dict[str, torch.Tensor]:
        """The first batch the next ``iter()`` will yield, without starting that iteration."""
        batch = next(self._batches(self._iteration), None)
        if batch is None:
            raise ValueError(f"{self.data_dir}/{self.split}: no complete batch of {self.batch_size} rows")
        return batch

    def __len__(self) -> int:
        """Batches per test iteration (training batch counts depend on the draws)."""
        if not self.test_mode:
            raise TypeError("the number of training batches depends on the sampled puzzles; len() is test-mode only")
        return sum(math.ceil(self._ranges(a)[1].sum() / self.batch_size) for a in self.sets)

    @property
    def num_batches(self) -> int:
        return len(self)


class FewShotPuzzleDataset(PuzzleDataset):
    """ETRM batches: ``PuzzleDataset``'s keys for each query plus its puzzle's demos,
    ``demo_inputs``/``demo_labels`` (B, max_demos, S) int32 raw tokens and ``demo_mask``
    (B, max_demos) bool. A puzzle with more demos than ``max_demos`` contributes its first
    ``max_demos``; padding rows have no valid demo."""

    def __init__(
        self,
        data_dir: str | Path,
        split: str,
        batch_size: int,
        *,
        max_demos: int = 10,
        seed: int = 0,
        test_mode: bool = False,
        rank: int = 0,
        world_size: int = 1,
        max_groups: int | None = None,
        epochs: int = 1,
    ) -> None:
        if max_demos < 1:
            raise ValueError(f"max_demos must be positive, got {max_demos}")
        super().__init__(
            data_dir,
            split,
            batch_size,
            seed=seed,
            test_mode=test_mode,
            rank=rank,
            world_size=world_size,
            max_groups=max_groups,
            epochs=epochs,
        )
        for arrays in self.sets:
            if arrays.num_demos is None:
                raise DatasetFormatError(
                    f"{self.data_dir / split / f'{arrays.name}__num_demos.npy'}: not found; "
                    f"few-shot datasets need a few-shot build (etrm build-data --mode fewshot)"
                )
        self.max_demos = max_demos

    def _ranges(self, arrays: SetArrays) -> tuple[np.ndarray, np.ndarray]:
        return arrays.query_ranges()  # queries only, in training too: demos are the context

    def _collate(self, arrays: SetArrays, rows: np.ndarray, puzzles: np.ndarray) -> dict[str, torch.Tensor]:
        batch = super()._collate(arrays, rows, puzzles)
        valid = rows >= 0
        num_demos = np.zeros(len(rows), dtype=np.int64)
        num_demos[valid] = np.minimum(arrays.num_demos[puzzles[valid]], self.max_demos)
        mask = np.arange(self.max_demos)[None, :] < num_demos[:, None]
        first_row = np.zeros(len(rows), dtype=np.int64)
        first_row[valid] = arrays.puzzle_indices[puzzles[valid]]
        demo_rows = (first_row[:, None] + np.arange(self.max_demos)[None, :])[mask]
        seq_len = self.metadata.seq_len
        demo_inputs = np.full((len(rows), self.max_demos, seq_len), self.metadata.pad_id, dtype=np.int32)
        demo_labels = np.full_like(demo_inputs, self.metadata.pad_id)
        demo_inputs[mask] = arrays.inputs[demo_rows]
        demo_labels[mask] = arrays.labels[demo_rows]
        batch.update(
            demo_inputs=torch.from_numpy(demo_inputs),
            demo_labels=torch.from_numpy(demo_labels),
            demo_mask=torch.from_numpy(mask),
        )
        return batch


def fewshot_batch(
    data_dir: str | Path, config, batch_size: int = 4, split: str = "test", device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """The first few-shot batch of a built dataset, checked against the model's canvas.
    `config` is any model config with `seq_len` and `max_demos` (etrm's ModelConfig, a user's model code)."""
    dataset = FewShotPuzzleDataset(data_dir, split, batch_size, max_demos=config.max_demos, test_mode=True)
    batch = dataset.first_batch()
    if batch["inputs"].shape[-1] != config.seq_len:
        raise ValueError(
            f"{data_dir}: sequences of {batch['inputs'].shape[-1]} tokens, but the model expects "
            f"seq_len {config.seq_len}: pass a dataset built for this model's canvas"
        )
    return {k: v.to(device) for k, v in batch.items()}
