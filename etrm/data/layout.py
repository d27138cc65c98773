"""Reading the on-disk dataset layout (official TRM builder's, and ours): per-split
metadata, memory-mapped token arrays with validated indices, the identifier map and the
test puzzles. No torch here, so builders and reports stay light."""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

METADATA_FILE = "dataset.json"
_REQUIRED_METADATA = (
    "pad_id",
    "ignore_label_id",
    "blank_identifier_id",
    "vocab_size",
    "seq_len",
    "num_puzzle_identifiers",
    "total_groups",
    "mean_puzzle_examples",
    "sets",
)


class DatasetFormatError(ValueError):
    """A built dataset folder is missing a file or holds inconsistent arrays; names the file."""


@dataclass(frozen=True)
class DatasetMetadata:
    """The official ``dataset.json`` of one split."""

    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int | None  # absent from older official builds
    sets: tuple[str, ...]


def load_metadata(data_dir: str | Path, split: str) -> DatasetMetadata:
    """Read ``<data_dir>/<split>/dataset.json``; errors name the file and the problem."""
    path = Path(data_dir) / split / METADATA_FILE
    if not path.is_file():
        raise DatasetFormatError(
            f"{path}: metadata file not found (is {data_dir} a built dataset with a {split!r} split?)"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{path}: expected a JSON object")
    missing = [key for key in _REQUIRED_METADATA if key not in data]
    if missing:
        raise DatasetFormatError(f"{path}: missing metadata key(s) {missing}")
    known = {f.name for f in fields(DatasetMetadata)}
    values = {key: data.get(key) for key in known}
    values["sets"] = tuple(values["sets"])
    if not values["sets"]:
        raise DatasetFormatError(f"{path}: 'sets' is empty")
    return DatasetMetadata(**values)


def load_identifiers(data_dir: str | Path) -> list[str]:
    """``identifiers.json``: puzzle name per identifier (index 0 is the blank)."""
    names = read_json(Path(data_dir) / "identifiers.json", list, "identifier map")
    if not all(isinstance(n, str) for n in names):
        raise DatasetFormatError(f"{Path(data_dir) / 'identifiers.json'}: expected a JSON list of puzzle names")
    return names


def read_json(path: Path, kind: type, what: str) -> Any:
    """A dataset's JSON file of the given top-level type; errors name the file."""
    if not path.is_file():
        raise DatasetFormatError(
            f"{path}: {what} not found: pass the dataset root, the folder that holds "
            "identifiers.json, test_puzzles.json and the split folders"
        )
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DatasetFormatError(f"{path}: invalid JSON ({error})") from None
    if not isinstance(data, kind):
        raise DatasetFormatError(
            f"{path}: {what} must be a JSON {'list' if kind is list else 'object'}, got {type(data).__name__}"
        )
    return data


@dataclass
class SetArrays:
    """The arrays of one set of one split; ``inputs``/``labels`` are memory-mapped."""

    name: str
    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray
    num_demos: np.ndarray | None

    @property
    def num_groups(self) -> int:
        return len(self.group_indices) - 1

    @property
    def puzzle_sizes(self) -> np.ndarray:
        return np.diff(self.puzzle_indices)

    def query_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        """(first query row, number of queries) per puzzle."""
        demos = np.zeros_like(self.puzzle_sizes) if self.num_demos is None else self.num_demos.astype(np.int64)
        return self.puzzle_indices[:-1] + demos, self.puzzle_sizes - demos

    def all_ranges(self) -> tuple[np.ndarray, np.ndarray]:
        return self.puzzle_indices[:-1].copy(), self.puzzle_sizes

    def limit_groups(self, max_groups: int | None) -> SetArrays:
        """Only the first ``max_groups`` task groups, with all their augmentations."""
        if max_groups is None or max_groups >= self.num_groups:
            return self
        puzzles = int(self.group_indices[max_groups])
        rows = int(self.puzzle_indices[puzzles])
        return SetArrays(
            self.name,
            self.inputs[:rows],
            self.labels[:rows],
            self.puzzle_identifiers[:puzzles],
            self.puzzle_indices[: puzzles + 1],
            self.group_indices[: max_groups + 1],
            None if self.num_demos is None else self.num_demos[:puzzles],
        )


def load_split(data_dir: str | Path, split: str) -> tuple[DatasetMetadata, list[SetArrays]]:
    """Metadata and validated arrays of every set of a split."""
    metadata = load_metadata(data_dir, split)
    folder = Path(data_dir) / split
    sets = []
    for set_name in metadata.sets:

        def load(field: str, mmap: bool = False, required: bool = True, set_name: str = set_name) -> np.ndarray | None:
            path = folder / f"{set_name}__{field}.npy"
            if not path.is_file():
                if required:
                    raise DatasetFormatError(f"{path}: array file not found")
                return None
            try:
                return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            except ValueError as error:
                raise DatasetFormatError(f"{path}: unreadable .npy ({error})") from None

        arrays = SetArrays(
            set_name,
            load("inputs", mmap=True),
            load("labels", mmap=True),
            load("puzzle_identifiers").astype(np.int64),
            load("puzzle_indices").astype(np.int64),
            load("group_indices").astype(np.int64),
            load("num_demos", required=False),
        )
        _validate(arrays, metadata, folder)
        sets.append(arrays)
    return metadata, sets


def _validate(a: SetArrays, metadata: DatasetMetadata, folder: Path) -> None:
    def fail(field: str, message: str) -> DatasetFormatError:
        return DatasetFormatError(f"{folder / f'{a.name}__{field}.npy'}: {message}")

    for field in ("inputs", "labels"):
        array = getattr(a, field)
        if array.ndim != 2 or array.shape[1] != metadata.seq_len:
            raise fail(field, f"shape {array.shape} is not (rows, seq_len={metadata.seq_len})")
    if a.labels.shape != a.inputs.shape:
        raise fail("labels", f"shape {a.labels.shape} differs from inputs {a.inputs.shape}")
    pi, gi = a.puzzle_indices, a.group_indices
    if len(pi) < 2 or pi[0] != 0 or pi[-1] != len(a.inputs) or np.any(np.diff(pi) < 0):
        raise fail("puzzle_indices", f"must rise from 0 to the row count {len(a.inputs)}")
    if len(gi) < 2 or gi[0] != 0 or gi[-1] != len(pi) - 1 or np.any(np.diff(gi) <= 0):
        raise fail("group_indices", f"must rise strictly from 0 to the puzzle count {len(pi) - 1}")
    if a.puzzle_identifiers.shape != (len(pi) - 1,):
        raise fail("puzzle_identifiers", f"has {a.puzzle_identifiers.shape} entries for {len(pi) - 1} puzzles")
    ids = a.puzzle_identifiers
    if ids.min() < 0 or ids.max() >= metadata.num_puzzle_identifiers:
        raise fail("puzzle_identifiers", f"values outside 0..{metadata.num_puzzle_identifiers - 1}")
    if a.num_demos is not None:
        if a.num_demos.shape != (len(pi) - 1,) or np.any(a.num_demos < 0) or np.any(a.num_demos > np.diff(pi)):
            raise fail("num_demos", "must give 0..puzzle size demos for every puzzle")


def load_test_puzzles(data_dir: str | Path) -> dict[str, Any]:
    """``test_puzzles.json``: the raw ARC JSON of every task scored on the test split."""
    return read_json(Path(data_dir) / "test_puzzles.json", dict, "test puzzles file")
