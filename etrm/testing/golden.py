"""Golden regression values: a model change that alters numerics must not pass silently.

A golden record `<name>` is two files in `fixtures/golden/`: `<name>.npz` with the exact
arrays, compared with per-dtype tolerances, and `<name>.json` with per-tensor shape,
dtype, sha256 digest and summary statistics, so that a review shows what moved.
Keys carry their context, e.g. "step1/logits". `pytest --update-golden` rewrites the
records on purpose; a missing record fails and says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# (rtol, atol) per source dtype: torch.testing.assert_close's defaults for one operation. The
# model records are float64 runs of CPU-independent weights (tests/test_golden_values.py), whose
# rounding across AVX-512, AVX2 and scalar kernels stays below 1e-10 even after 30 layer
# applications, so a tolerance of one operation's size still passes on every CPU while a missing
# RMSNorm epsilon (~1e-5) or one weight off by 1e-3 fails. Python floats (metrics) get float32's.
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-7, 1e-7),
    "float32": (1.3e-6, 1e-5),
    "float": (1.3e-6, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float16": (1e-3, 1e-5),
}
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class GoldenError(ValueError):
    """A golden record or value cannot be used; the message names it."""


@dataclass(frozen=True)
class TensorDiff:
    """How one tensor differs from its golden value."""

    key: str
    problem: str  # "values", "shape", "dtype", "added", "removed"
    detail: str
    max_abs_diff: float | None = None
    old: dict[str, Any] | None = None
    new: dict[str, Any] | None = None

    def format(self) -> str:
        lines = [f"  {self.key}: {self.detail}"]
        if self.old is not None:
            lines.append(f"      old: {_format_stats(self.old)}")
        if self.new is not None:
            lines.append(f"      new: {_format_stats(self.new)}")
        return "\n".join(lines)


@dataclass
class GoldenDiff:
    """Result of comparing values against the golden record `name`."""

    name: str
    npz_path: Path
    status: str  # "match", "mismatch", "missing", "created", "updated"
    diffs: list[TensorDiff] = field(default_factory=list)
    compared: int = 0

    @property
    def ok(self) -> bool:
        return self.status in ("match", "created", "updated")

    def format(self) -> str:
        if self.status == "missing":
            return (
                f"golden record {self.name!r} is missing ({self.npz_path}): "
                "run `pytest --update-golden` to create it, and commit the files"
            )
        if self.status == "match":
            return f"golden record {self.name!r}: {self.compared} tensors match"
        head = {
            "mismatch": f"golden record {self.name!r} changed: {len(self.diffs)} of "
            f"{self.compared} tensors moved ({self.npz_path})",
            "created": f"golden record {self.name!r} created ({self.npz_path})",
            "updated": f"golden record {self.name!r} rewritten: {len(self.diffs)} tensors had moved",
        }
        lines = [head[self.status]] + [d.format() for d in self.diffs]
        if self.status == "mismatch":
            lines.append(
                "if the change is intended, run `pytest --update-golden` and commit the new "
                "golden files so it shows up in review"
            )
        return "\n".join(lines)


def default_golden_dir() -> Path:
    from etrm.testing.artifacts import fixtures_root

    return fixtures_root() / "golden"


def compare_to_golden(
    name: str,
    tensors: Mapping[str, Any],
    *,
    update: bool,
    golden_dir: str | Path | None = None,
    tolerances: Mapping[str, tuple[float, float]] | None = None,
) -> GoldenDiff:
    """Compare `tensors` (torch tensors, numpy arrays or Python scalars) with the golden
    record `name`; with `update`, (re)write the record and report what had moved."""
    if not _NAME.match(name):
        raise GoldenError(f"golden name {name!r} must use only letters, digits, '_', '.', '-'")
    if not tensors:
        raise GoldenError(f"golden record {name!r}: no tensors given")
    tol = {**TOLERANCES, **(tolerances or {})}
    folder = default_golden_dir() if golden_dir is None else Path(golden_dir)
    npz_path, json_path = folder / f"{name}.npz", folder / f"{name}.json"
    new = {str(k): _to_numpy(name, str(k), v) for k, v in tensors.items()}

    if not npz_path.is_file():
        if not update:
            return GoldenDiff(name, npz_path, "missing")
        _write(npz_path, json_path, new)
        return GoldenDiff(name, npz_path, "created", compared=len(new))

    old = _read(npz_path, json_path)
    diffs = [d for key in sorted(set(old) | set(new)) if (d := _diff(key, old.get(key), new.get(key), tol))]
    if update:
        if diffs:
            _write(npz_path, json_path, new)
        return GoldenDiff(name, npz_path, "updated" if diffs else "match", diffs, len(new))
    return GoldenDiff(name, npz_path, "mismatch" if diffs else "match", diffs, len(new))


def tensor_summary(array: np.ndarray, dtype: str) -> dict[str, Any]:
    """Shape, dtype, digest and statistics of one stored array, as in `<name>.json`."""
    stats: dict[str, Any] = {
        "shape": list(array.shape),
        "dtype": dtype,
        "sha256": hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest(),
    }
    if array.size:
        values = array.astype(np.float64)
        finite = values[np.isfinite(values)]
        for stat in ("mean", "std", "min", "max"):
            stats[stat] = float(getattr(finite, stat)()) if finite.size else None
        stats["nonfinite"] = int(values.size - finite.size)
    return stats


# --- internals -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Value:
    array: np.ndarray
    dtype: str  # source dtype name, e.g. "float32", "bfloat16", "float", "int64"


def _to_numpy(record: str, key: str, value: Any) -> _Value:
    if isinstance(value, bool):
        return _Value(np.asarray(value), "bool")
    if isinstance(value, int):
        return _Value(np.asarray(value, dtype=np.int64), "int")
    if isinstance(value, float):
        return _Value(np.asarray(value, dtype=np.float64), "float")
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)
        if array.dtype == object:
            raise GoldenError(f"golden record {record!r}, {key}: object arrays cannot be stored")
        return _Value(array, str(array.dtype))
    if type(value).__module__.startswith("torch"):
        import torch

        if isinstance(value, torch.Tensor):
            dtype = str(value.dtype).removeprefix("torch.")
            t = value.detach().cpu()
            # numpy has no bfloat16: stored upcast, compared with bfloat16's tolerance.
            array = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
            return _Value(np.array(array), dtype)
    raise GoldenError(
        f"golden record {record!r}, {key}: cannot store a {type(value).__name__}; "
        "give a tensor, an array or a Python number"
    )


def _diff(
    key: str, old: _Value | None, new: _Value | None, tol: Mapping[str, tuple[float, float]]
) -> TensorDiff | None:
    if old is None:
        return TensorDiff(
            key, "added", "new tensor, not in the golden record", new=tensor_summary(new.array, new.dtype)
        )
    if new is None:
        return TensorDiff(
            key, "removed", "in the golden record but not produced any more", old=tensor_summary(old.array, old.dtype)
        )
    old_s, new_s = tensor_summary(old.array, old.dtype), tensor_summary(new.array, new.dtype)
    if old.dtype != new.dtype:
        return TensorDiff(key, "dtype", f"dtype {old.dtype} -> {new.dtype}", old=old_s, new=new_s)
    if old.array.shape != new.array.shape:
        return TensorDiff(
            key, "shape", f"shape {tuple(old.array.shape)} -> {tuple(new.array.shape)}", old=old_s, new=new_s
        )
    if old.dtype in tol:
        rtol, atol = tol[old.dtype]
        a, b = old.array.astype(np.float64), new.array.astype(np.float64)
        close = np.isclose(b, a, rtol=rtol, atol=atol, equal_nan=True)
    else:  # integers, bools: exact
        rtol = atol = 0.0
        a, b = old.array.astype(np.float64), new.array.astype(np.float64)
        close = old.array == new.array
    if bool(np.all(close)):
        return None
    with np.errstate(invalid="ignore"):
        delta = np.abs(b - a)
    delta = np.where(close, 0.0, np.nan_to_num(delta, nan=np.inf))
    where = tuple(int(i) for i in np.unravel_index(int(np.argmax(delta)), delta.shape))
    max_diff = float(delta[where])
    detail = (
        f"{int((~close).sum())} of {close.size} values moved, max abs diff {max_diff:.3g} at index "
        f"{where} ({float(a[where]):.6g} -> {float(b[where]):.6g}; rtol {rtol:g}, atol {atol:g})"
    )
    return TensorDiff(key, "values", detail, max_diff, old_s, new_s)


def _write(npz_path: Path, json_path: Path, values: Mapping[str, _Value]) -> None:
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    summary = {key: tensor_summary(values[key].array, values[key].dtype) for key in sorted(values)}
    # Write beside the target, then rename: an interrupted update never leaves half a record.
    for path, write in (
        (npz_path, lambda f: np.savez(f, **{k: v.array for k, v in values.items()})),
        (json_path, lambda f: f.write(json.dumps(summary, indent=1, sort_keys=True).encode())),
    ):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _read(npz_path: Path, json_path: Path) -> dict[str, _Value]:
    if not json_path.is_file():
        raise GoldenError(f"{json_path}: missing beside {npz_path.name}; run `pytest --update-golden`")
    summary = json.loads(json_path.read_text())
    with np.load(npz_path, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    if set(arrays) != set(summary):
        raise GoldenError(
            f"{npz_path} and {json_path.name} list different tensors; run `pytest --update-golden` to rewrite both"
        )
    return {key: _Value(arrays[key], summary[key]["dtype"]) for key in arrays}


def _format_stats(stats: Mapping[str, Any]) -> str:
    parts = [f"shape {tuple(stats['shape'])}", stats["dtype"]]
    for k in ("mean", "std", "min", "max"):
        if stats.get(k) is not None:
            parts.append(f"{k} {stats[k]:.6g}")
    if stats.get("nonfinite"):
        parts.append(f"{stats['nonfinite']} non-finite")
    return ", ".join(parts)


class GoldenChecker:
    """What the `golden` fixture returns: `check(name, tensors)` fails the test on a mismatch."""

    def __init__(self, update: bool, golden_dir: str | Path | None = None) -> None:
        self.update = update
        self.golden_dir = golden_dir

    def check(
        self, name: str, tensors: Mapping[str, Any], tolerances: Mapping[str, tuple[float, float]] | None = None
    ) -> GoldenDiff:
        import pytest

        diff = compare_to_golden(name, tensors, update=self.update, golden_dir=self.golden_dir, tolerances=tolerances)
        if not diff.ok:
            pytest.fail(diff.format(), pytrace=False)
        return diff
