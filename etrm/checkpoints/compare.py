"""Comparing the decoder tensors of two checkpoints (`etrm verify-decoder`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from etrm.checkpoints.errors import CheckpointError
from etrm.checkpoints.layouts import DECODER_BUFFERS, PUZZLE_EMB_PREFIX, classify_key
from etrm.checkpoints.reading import read_state_dict


@dataclass(frozen=True)
class TensorDiff:
    """One decoder tensor in two checkpoints. `equal`: same shape and identical values."""

    name: str
    kind: str  # "param" | "buffer"
    shape: tuple[int, ...]
    other_shape: tuple[int, ...]
    dtypes: tuple[str, str]
    equal: bool
    max_abs_diff: float | None  # None when the shapes differ
    mean_abs_diff: float | None


@dataclass(frozen=True)
class DecoderComparison:
    """Decoder tensors of a TRM checkpoint vs an ETRM checkpoint, parameters and buffers apart."""

    trm_path: Path
    etrm_path: Path
    params: tuple[TensorDiff, ...]
    buffers: tuple[TensorDiff, ...]
    only_in_trm: tuple[str, ...]
    only_in_etrm: tuple[str, ...]

    @property
    def num_params_equal(self) -> int:
        return sum(d.equal for d in self.params)

    @property
    def all_params_equal(self) -> bool:
        """Every decoder parameter is in both checkpoints with identical values."""
        only = [n for n in self.only_in_trm + self.only_in_etrm if n not in DECODER_BUFFERS]
        return bool(self.params) and not only and all(d.equal for d in self.params)

    def summary(self) -> str:
        lines = [
            f"Decoder of {self.trm_path} (TRM) vs {self.etrm_path} (ETRM); puzzle_emb.* not compared",
            f"parameters: {self.num_params_equal}/{len(self.params)} equal",
            f"buffers:    {sum(d.equal for d in self.buffers)}/{len(self.buffers)} equal "
            "(never trained: compared apart from the parameters)",
        ]
        width = max([len(d.name) for d in self.params + self.buffers] + [4])
        lines.append(f"  {'kind':6} {'name':{width}} {'equal':5} {'max|diff|':>11} {'mean|diff|':>11}")
        for d in self.params + self.buffers:
            if d.max_abs_diff is None:
                lines.append(f"  {d.kind:6} {d.name:{width}} {'no':5} shape {d.shape} vs {d.other_shape}")
            else:
                dt = "" if d.dtypes[0] == d.dtypes[1] else f"  dtype {d.dtypes[0]} vs {d.dtypes[1]}"
                lines.append(
                    f"  {d.kind:6} {d.name:{width}} {'yes' if d.equal else 'no':5} "
                    f"{d.max_abs_diff:11.4g} {d.mean_abs_diff:11.4g}{dt}"
                )
        if self.only_in_trm:
            lines.append(f"only in the TRM checkpoint: {list(self.only_in_trm)}")
        if self.only_in_etrm:
            lines.append(f"only in the ETRM checkpoint: {list(self.only_in_etrm)}")
        lines.append(
            "verdict: every decoder parameter equal" if self.all_params_equal else "verdict: decoder parameters differ"
        )
        return "\n".join(lines)


def decoder_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Decoder tensors of a state dict by decoder-relative name, `puzzle_emb.*` left out."""
    out = {}
    for key, tensor in state.items():
        component, name, _ = classify_key(key)
        if component == "decoder" and not name.startswith(PUZZLE_EMB_PREFIX):
            out[name] = tensor
    return out


def compare_decoders(trm_path: str | Path, etrm_path: str | Path) -> DecoderComparison:
    """Compare the decoder tensors of two checkpoints (any key layouts), per tensor."""
    a = decoder_tensors(read_state_dict(trm_path))
    b = decoder_tensors(read_state_dict(etrm_path))
    if not a:
        raise CheckpointError(f"{trm_path}: no decoder tensors (keys under inner.*) in the checkpoint")
    if not b:
        raise CheckpointError(f"{etrm_path}: no decoder tensors (keys under inner.*) in the checkpoint")
    params, buffers = [], []
    for name in (n for n in a if n in b):
        x, y = a[name], b[name]
        kind = "buffer" if name in DECODER_BUFFERS else "param"
        dtypes = (str(x.dtype).removeprefix("torch."), str(y.dtype).removeprefix("torch."))
        if x.shape != y.shape:
            diff = TensorDiff(name, kind, tuple(x.shape), tuple(y.shape), dtypes, False, None, None)
        else:
            x64, y64 = x.double(), y.double()
            delta = (x64 - y64).abs()
            diff = TensorDiff(
                name,
                kind,
                tuple(x.shape),
                tuple(y.shape),
                dtypes,
                bool(torch.equal(x64, y64)),
                float(delta.max()) if delta.numel() else 0.0,
                float(delta.mean()) if delta.numel() else 0.0,
            )
        (buffers if kind == "buffer" else params).append(diff)
    return DecoderComparison(
        Path(trm_path),
        Path(etrm_path),
        tuple(params),
        tuple(buffers),
        tuple(n for n in a if n not in b),
        tuple(n for n in b if n not in a),
    )
