"""ARC grid codec and augmentations (DESIGN.md sections 3 and 5).

A grid of ``r x c`` colours (0-9) becomes a flat ``canvas * canvas`` token vector:
colours are shifted by ``COLOR_OFFSET``, the grid sits at an offset, EOS fills the row
segment just below the grid's columns and the column segment just right of its rows
(where they fit on the canvas), and every other cell, the corner included, is PAD.

Augmentations are the official builder's: a colour permutation followed by one of the
eight dihedral transforms, named ``<task>|||t<t>|||<10-digit mapping>`` so that the
exact inverse can be recovered from a puzzle's name alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

PAD_ID = 0
EOS_ID = 1
COLOR_OFFSET = 2
NUM_COLORS = 10
VOCAB_SIZE = COLOR_OFFSET + NUM_COLORS  # 12
IGNORE_LABEL_ID = -100  # label value the loss skips (PAD labels become this at batch time)
BLANK_IDENTIFIER_ID = 0  # puzzle identifier of padding rows ("<blank>" in identifiers.json)
DEFAULT_CANVAS = 30  # ARC grids are at most 30x30; seq_len = canvas ** 2
MAX_GRID_SIZE = 30

NUM_TRANSFORMS = 8
# DIHEDRAL_INVERSE[t] undoes transform t (rotations by 90 and 270 degrees swap, the rest are involutions).
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)
AUG_SEPARATOR = "|||"
IDENTITY_MAPPING = tuple(range(NUM_COLORS))


# --- validation -----------------------------------------------------------------------------
def as_grid(grid: object, max_size: int = MAX_GRID_SIZE) -> np.ndarray:
    """Validate an ARC grid (nested lists or a 2-D integer array) and return it as uint8.

    Raises ValueError saying what is wrong: ragged rows, wrong dimensionality, an empty
    grid, a non-integer or out-of-range value, or a side longer than ``max_size``.
    """
    if isinstance(grid, np.ndarray):
        arr = grid
    else:
        if not isinstance(grid, (list, tuple)) or not all(isinstance(row, (list, tuple)) for row in grid):
            raise ValueError(f"grid must be a list of rows (lists of colours), got {type(grid).__name__}")
        if not grid:
            raise ValueError("empty grid: no rows")
        lengths = {len(row) for row in grid}
        if len(lengths) > 1:
            raise ValueError(f"ragged grid: rows have lengths {sorted(lengths)}")
        arr = np.array(grid)
    if arr.ndim != 2:
        raise ValueError(f"grid must be 2-D, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"empty grid of shape {arr.shape}")
    if arr.shape[0] > max_size or arr.shape[1] > max_size:
        raise ValueError(f"grid of shape {arr.shape} exceeds {max_size}x{max_size}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"grid values must be integers 0-9, got dtype {arr.dtype}")
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= NUM_COLORS:
        bad = low if low < 0 else high
        raise ValueError(f"grid value {bad} outside the colours 0-9")
    return arr.astype(np.uint8, copy=False)


# --- codec ----------------------------------------------------------------------------------
def place_grid(out: np.ndarray, grid: np.ndarray, offset: tuple[int, int] = (0, 0)) -> None:
    """Write an already validated uint8 grid into a zeroed (canvas, canvas) token view.

    The builder's hot path: no validation and no allocation; ``encode_grid`` is the
    checked public entry.
    """
    canvas = out.shape[0]
    r0, c0 = offset
    rows, cols = grid.shape
    r1, c1 = r0 + rows, c0 + cols
    out[r0:r1, c0:c1] = grid + COLOR_OFFSET
    if r1 < canvas:
        out[r1, c0:c1] = EOS_ID
    if c1 < canvas:
        out[r0:r1, c1] = EOS_ID


def encode_grid(grid: object, canvas: int = DEFAULT_CANVAS, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Encode a grid as a uint8 vector of ``canvas * canvas`` tokens (DESIGN.md section 3)."""
    arr = as_grid(grid, max_size=canvas)
    r0, c0 = (int(v) for v in offset)
    if r0 < 0 or c0 < 0 or r0 + arr.shape[0] > canvas or c0 + arr.shape[1] > canvas:
        raise ValueError(f"grid of shape {arr.shape} at offset ({r0}, {c0}) does not fit a {canvas}x{canvas} canvas")
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    place_grid(out, arr, (r0, c0))
    return out.reshape(-1)


def decode_grid(tokens: object, canvas: int | None = None, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Crop the largest top-left rectangle of colour tokens and return its colours.

    Same rule as the official ARC evaluator: walking down the rows, the usable width is
    the running minimum of each row's leading run of colour tokens; the crop is the
    (rows, width) of largest area, the first one on ties. A sequence that starts with a
    non-colour token decodes to an empty (0, 0) grid. Accepts a flat vector (canvas
    inferred as its square root when not given) or a (canvas, canvas) array. ``offset``
    moves the crop's top-left corner (translated training rows); the evaluator uses (0, 0).
    """
    arr = np.asarray(tokens)
    if arr.ndim == 1:
        side = canvas if canvas is not None else int(round(np.sqrt(arr.size)))
        if side * side != arr.size:
            raise ValueError(f"token vector of length {arr.size} is not a {side}x{side} canvas")
        arr = arr.reshape(side, side)
    elif arr.ndim != 2 or arr.shape[0] != arr.shape[1] or (canvas is not None and arr.shape[0] != canvas):
        raise ValueError(f"expected a flat token vector or a square canvas, got shape {arr.shape}")
    r0, c0 = (int(v) for v in offset)
    if not (0 <= r0 < arr.shape[0] and 0 <= c0 < arr.shape[1]):
        raise ValueError(f"offset ({r0}, {c0}) is outside the {arr.shape[0]}x{arr.shape[1]} canvas")
    arr = arr[r0:, c0:]
    is_colour = (arr >= COLOR_OFFSET) & (arr < COLOR_OFFSET + NUM_COLORS)
    leading = np.cumprod(is_colour, axis=1).sum(axis=1)  # length of each row's leading colour run
    widths = np.minimum.accumulate(leading)
    areas = widths * np.arange(1, arr.shape[0] + 1)
    best = int(np.argmax(areas))
    if areas[best] == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    return (arr[: best + 1, : widths[best]] - COLOR_OFFSET).astype(np.uint8)


# --- dihedral transforms ------------------------------------------------------------------
def _check_transform_id(t: int) -> int:
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= int(t) < NUM_TRANSFORMS:
        raise ValueError(f"dihedral transform id must be an integer 0-7, got {t!r}")
    return int(t)


def dihedral_transform(grid: np.ndarray, t: int) -> np.ndarray:
    """Apply dihedral transform ``t`` with the official ids.

    0 identity, 1-3 ``np.rot90`` with k = 1..3, 4 fliplr, 5 flipud, 6 transpose,
    7 fliplr after rot90 (the anti-diagonal reflection).
    """
    t = _check_transform_id(t)
    # Slicing views equal to the np.rot90/fliplr/flipud compositions named above, without
    # their per-call overhead (the builder applies hundreds of thousands of them).
    if t == 0:
        return grid
    if t == 1:
        return grid.T[::-1]  # np.rot90(grid, k=1)
    if t == 2:
        return grid[::-1, ::-1]  # np.rot90(grid, k=2)
    if t == 3:
        return grid[::-1].T  # np.rot90(grid, k=3)
    if t == 4:
        return grid[:, ::-1]  # np.fliplr
    if t == 5:
        return grid[::-1]  # np.flipud
    if t == 6:
        return grid.T
    return grid.T[::-1, ::-1]  # np.fliplr(np.rot90(grid, k=1))


def inverse_dihedral_transform(grid: np.ndarray, t: int) -> np.ndarray:
    """Undo ``dihedral_transform(grid, t)``."""
    return dihedral_transform(grid, DIHEDRAL_INVERSE[_check_transform_id(t)])


# --- augmentations ------------------------------------------------------------------------
@dataclass(frozen=True)
class Augmentation:
    """A colour permutation (``new = mapping[old]``) followed by a dihedral transform."""

    transform_id: int = 0
    mapping: tuple[int, ...] = IDENTITY_MAPPING
    # Lookup tables for the forward and inverse colour maps, built once.
    _lut: np.ndarray = field(init=False, repr=False, compare=False)
    _inverse_lut: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "transform_id", _check_transform_id(self.transform_id))
        mapping = tuple(int(v) for v in self.mapping)
        if sorted(mapping) != list(IDENTITY_MAPPING):
            raise ValueError(f"colour mapping must be a permutation of 0-9, got {mapping}")
        object.__setattr__(self, "mapping", mapping)
        lut = np.array(mapping, dtype=np.uint8)
        object.__setattr__(self, "_lut", lut)
        object.__setattr__(self, "_inverse_lut", np.argsort(lut).astype(np.uint8))

    @property
    def is_identity(self) -> bool:
        return self.transform_id == 0 and self.mapping == IDENTITY_MAPPING

    @property
    def inverse_mapping(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self._inverse_lut)

    def apply(self, grid: np.ndarray) -> np.ndarray:
        return dihedral_transform(self._lut[np.asarray(grid)], self.transform_id)

    def invert(self, grid: np.ndarray) -> np.ndarray:
        return self._inverse_lut[inverse_dihedral_transform(np.asarray(grid), self.transform_id)]


_AUG_PATTERN = re.compile(r"t([0-7])")


def augmentation_name(task_id: str, aug: Augmentation) -> str:
    """Puzzle name of ``aug`` applied to ``task_id``: the bare id for the identity."""
    if AUG_SEPARATOR in task_id:
        raise ValueError(f"task id {task_id!r} must not contain {AUG_SEPARATOR!r}")
    if aug.is_identity:
        return task_id
    return f"{task_id}{AUG_SEPARATOR}t{aug.transform_id}{AUG_SEPARATOR}{''.join(map(str, aug.mapping))}"


def parse_augmentation_name(name: str) -> tuple[str, Augmentation]:
    """Split a puzzle name into its base task id and the augmentation it names."""
    parts = name.split(AUG_SEPARATOR)
    if len(parts) == 1:
        return name, Augmentation()
    if len(parts) != 3 or not parts[0]:
        raise ValueError(
            f"malformed puzzle name {name!r}: expected <task>{AUG_SEPARATOR}t<0-7>"
            f"{AUG_SEPARATOR}<10-digit colour mapping>"
        )
    task_id, transform, mapping = parts
    match = _AUG_PATTERN.fullmatch(transform)
    if match is None:
        raise ValueError(f"malformed puzzle name {name!r}: transform part {transform!r} is not t0..t7")
    if len(mapping) != NUM_COLORS or not mapping.isdigit() or sorted(mapping) != list("0123456789"):
        raise ValueError(
            f"malformed puzzle name {name!r}: colour mapping {mapping!r} is not a permutation of the digits 0-9"
        )
    return task_id, Augmentation(int(match.group(1)), tuple(int(ch) for ch in mapping))


def random_augmentation(rng: np.random.Generator) -> Augmentation:
    """One draw of the official plan: a transform id 0-7 and a permutation of colours 1-9 (0 fixed)."""
    transform_id = int(rng.integers(0, NUM_TRANSFORMS))
    mapping = (0, *(int(v) + 1 for v in rng.permutation(NUM_COLORS - 1)))
    return Augmentation(transform_id, mapping)


# --- round-trip check (reused by the hypothesis-5 checks) ---------------------------------
def _round_trip_grids() -> list[np.ndarray]:
    # Non-square grids with every colour, no symmetry: a wrong inverse cannot hide.
    rng = np.random.default_rng(1234)
    return [rng.integers(0, NUM_COLORS, size=shape).astype(np.uint8) for shape in ((3, 5), (7, 2), (4, 4))]


def _round_trip_augmentations() -> list[Augmentation]:
    rng = np.random.default_rng(4321)
    mappings = [IDENTITY_MAPPING, random_augmentation(rng).mapping, tuple(int(v) for v in rng.permutation(10))]
    return [Augmentation(t, m) for t in range(NUM_TRANSFORMS) for m in mappings]


def check_augmentation_round_trip(
    augment: Callable[[np.ndarray, Augmentation], np.ndarray] = lambda grid, aug: aug.apply(grid),
    invert: Callable[[np.ndarray, Augmentation], np.ndarray] = lambda grid, aug: aug.invert(grid),
    grids: Iterable[np.ndarray] | None = None,
    augmentations: Sequence[Augmentation] | None = None,
) -> list[str]:
    """Return one message per (grid, augmentation) where ``invert(augment(g)) != g``.

    By default every transform id is paired with the identity, a 0-fixing and an
    arbitrary colour permutation, over asymmetric non-square grids. An empty list
    means every round trip was exact.
    """
    grids = _round_trip_grids() if grids is None else [np.asarray(g) for g in grids]
    augmentations = _round_trip_augmentations() if augmentations is None else list(augmentations)
    failures = []
    for aug in augmentations:
        for grid in grids:
            back = np.asarray(invert(np.asarray(augment(grid, aug)), aug))
            if back.shape != grid.shape or not np.array_equal(back, grid):
                failures.append(
                    f"t{aug.transform_id} mapping {''.join(map(str, aug.mapping))}: "
                    f"inverse(augment(grid of shape {grid.shape})) gives a grid of shape "
                    f"{back.shape} that differs from the original"
                )
    return failures
