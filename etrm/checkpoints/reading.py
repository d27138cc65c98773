"""Reading a checkpoint file safely, and scanning its tensors for statistics and NaN/Inf.

Safety. Every file is read with `torch.load(weights_only=True)`, so loading never runs
code, and memory-mapped (`mmap=True`, zip format), so a 1.8 GB `puzzle_emb.weights`
that is never touched is never read. A legacy (pre-zip) file cannot be memory-mapped:
`read_state_dict` then loads it whole with a `LegacyCheckpointWarning` saying so, or,
with `allow_legacy=False`, refuses it with the same explanation.
"""

from __future__ import annotations

import math
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch

from etrm.checkpoints.errors import CheckpointError, LegacyCheckpointWarning

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"
_CHUNK = 1 << 22  # elements per chunk when scanning big tensors


def read_state_dict(
    path: str | Path, *, map_location: str | torch.device = "cpu", allow_legacy: bool = True
) -> dict[str, torch.Tensor]:
    """A checkpoint's state dict, memory-mapped and loaded without running any code.

    Accepts a plain state dict (what the official trainer saves) or a training bundle
    whose "model" entry is one. Missing, empty, truncated or corrupt files, pickles
    that would construct arbitrary objects (refused: nothing is executed), and payloads
    that are not a mapping of names to tensors raise `CheckpointError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(
            f"{path}: is a directory; give the checkpoint file inside it "
            "(the official trainer writes files named step_<N>)"
        )
    with open(path, "rb") as handle:
        magic = handle.read(4)
    if not magic:
        raise CheckpointError(f"{path}: empty file, not a checkpoint")
    zip_format = magic == _ZIP_MAGIC
    if not zip_format:
        if magic[:1] != _PICKLE_PROTO:
            raise CheckpointError(f"{path}: not a PyTorch checkpoint (neither the zip format nor a legacy pickle)")
        message = (
            f"{path}: legacy (non-zip) checkpoint format: it cannot be memory-mapped, so the whole file "
            f"({_size(path.stat().st_size)}) is read into memory, puzzle_emb.weights included; re-save it "
            "with torch.save (zip format, the default since PyTorch 1.6) to load it lazily"
        )
        if not allow_legacy:
            raise CheckpointError(message)
        warnings.warn(message, LegacyCheckpointWarning, stacklevel=2)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True, mmap=zip_format)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Weights only load failed" in text:
            reason = next((line.strip() for line in text.splitlines() if "WeightsUnpickler error" in line), "")
            raise CheckpointError(
                f"{path}: refused: the file holds objects whose unpickling would run code "
                f"({reason or 'unsupported global'}); checkpoints are loaded with weights_only=True "
                "and nothing in them is executed"
            ) from None
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({text})") from None
    except Exception as err:  # any other read failure means a damaged file
        raise CheckpointError(f"{path}: truncated or corrupt checkpoint ({type(err).__name__}: {err})") from None

    if isinstance(payload, Mapping) and isinstance(payload.get("model"), Mapping):
        payload = payload["model"]  # resume bundle {"model": state_dict, "optimizers": ..., "step": ...}
    if not isinstance(payload, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(payload).__name__}"
        )
    if not payload:
        raise CheckpointError(f"{path}: the state dict is empty")
    for key, value in payload.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: not a state dict: entry {key!r} holds a {type(value).__name__}, not a tensor"
            )
    return dict(payload)


def count_nonfinite(tensor: torch.Tensor) -> int:
    """NaN + Inf entries, scanned in chunks so a huge table needs no full-size temporary."""
    if not tensor.is_floating_point():
        return 0
    flat = tensor.reshape(-1)
    return sum(int((~torch.isfinite(flat[i : i + _CHUNK])).sum()) for i in range(0, flat.numel(), _CHUNK))


def tensor_stats(tensor: torch.Tensor) -> dict[str, float | int]:
    """min / max / mean / std over the finite entries (float64 sums), plus NaN and Inf counts."""
    flat = tensor.reshape(-1)
    count, total, squares = 0, 0.0, 0.0
    low, high, nans, infs = math.inf, -math.inf, 0, 0
    for i in range(0, flat.numel(), _CHUNK):
        chunk = flat[i : i + _CHUNK].double()
        finite = torch.isfinite(chunk)
        nans += int(torch.isnan(chunk).sum())
        infs += int(torch.isinf(chunk).sum())
        values = chunk[finite]
        if values.numel():
            count += values.numel()
            total += float(values.sum())
            squares += float(values.square().sum())
            low, high = min(low, float(values.min())), max(high, float(values.max()))
    mean = total / count if count else math.nan
    var = (squares - count * mean * mean) / (count - 1) if count > 1 else math.nan
    return {
        "min": low if count else math.nan,
        "max": high if count else math.nan,
        "mean": mean,
        "std": math.sqrt(max(var, 0.0)) if count > 1 else math.nan,
        "nan": nans,
        "inf": infs,
    }


def _size(nbytes: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")
