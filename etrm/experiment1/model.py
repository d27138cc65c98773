"""The model Experiment 1 trains: etrm's ETRM at the TRM checkpoint's settings, or the
researcher's own ETRM class (`--model-code ROOT`) built by `etrm.model_code`, the builder
`etrm investigate --model-code` uses. Either way the decoder is the TRM checkpoint's
(every decoder tensor loaded, or an error naming the ones that are not) and the encoder
is the model's `encoder` submodule, which is what trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from etrm.experiment1.loop import BuiltModel

# What a user's loss head is asked to return each step (the official trainer passes return_keys).
USER_OUTPUT_KEYS = ("logits", "preds", "q_halt_logits", "context")


def build_etrm(trm_checkpoint, config, model_factory=None) -> BuiltModel:
    """etrm's ETRM for `config` (or `model_factory(config)`, e.g. a wrapped encoder) with
    the TRM checkpoint's decoder loaded."""
    from etrm.checkpoints import load_pretrained_decoder
    from etrm.models import build_model

    head = (model_factory or build_model)(config)
    report = load_pretrained_decoder(head, trm_checkpoint)
    return BuiltModel(head, decoder_load_record(report), model_config=config, max_demos=config.max_demos)


class OfficialHeadAdapter(nn.Module):
    """etrm's calling convention (`head(carry, batch)`, `head.config.halt_max_steps`) over a
    loss head with the official one (`head(carry=, batch=, return_keys=)`). It holds the
    user's model under the same name, `model`, so parameter and state-dict names are theirs."""

    def __init__(self, head: nn.Module, halt_max_steps: int):
        super().__init__()
        self.model = head.model
        self._head = [head]  # not a submodule: its only module is `model`
        self.config = SimpleNamespace(halt_max_steps=halt_max_steps)

    def train(self, mode: bool = True):
        self._head[0].train(mode)
        return super().train(mode)

    def initial_carry(self, batch):
        return self._head[0].initial_carry(batch)

    def forward(self, carry, batch, return_keys: Sequence[str] | None = None):
        return self._head[0](carry=carry, batch=batch, return_keys=list(return_keys or USER_OUTPUT_KEYS))


def build_user_model(root, config_file: Path, trm_checkpoint, data_dir) -> BuiltModel:
    """The user's model of `config_file` (an all_config.yaml-style file) with the TRM decoder."""
    from etrm.model_code import ModelCodeError, build_model_code

    code = build_model_code(root, config_file, data_dir)
    model = code.model
    head = model.head
    if model.encoder is None:
        raise ModelCodeError(f"{model.name}: {model.missing('encoder')}; Experiment 1 trains the encoder")
    if not isinstance(getattr(head, "model", None), nn.Module) or not hasattr(head.model, "inner"):
        raise ModelCodeError(f"{model.name}: the loss head has no model.inner (the decoder, as in the official code)")
    if {id(p) for p in head.parameters()} != {id(p) for p in head.model.parameters()}:
        raise ModelCodeError(f"{model.name}: the loss head has parameters outside its model")
    stray = [n for n, _ in head.named_parameters() if not n.startswith(("model.inner.", "model.encoder."))]
    if stray:
        raise ModelCodeError(
            f"{model.name}: parameters outside model.inner and model.encoder, which the trainer cannot "
            f"assign to the decoder or the encoder: {stray[:4]}"
        )
    report = SimpleNamespace(**load_decoder_by_name(head, trm_checkpoint))
    return BuiltModel(
        OfficialHeadAdapter(head, model.halt_max_steps),
        decoder_load_record(report),
        config_file=Path(config_file),
        max_demos=code.max_demos,
        interface=model,
    )


def load_decoder_by_name(head: nn.Module, trm_checkpoint) -> dict[str, Any]:
    """Copy the checkpoint's decoder tensors (`model.inner.*`, the puzzle embedding left
    out) into the head's tensors of the same names; every one of the head's decoder tensors
    must be there at its shape. Returns what `decoder_load_record` reports."""
    from etrm.checkpoints import normalize_key, read_state_dict
    from etrm.model_code import ModelCodeError, fit_problems

    path = Path(trm_checkpoint)
    saved = {
        normalize_key(k): v
        for k, v in read_state_dict(path).items()
        if normalize_key(k).startswith("model.inner.") and ".puzzle_emb." not in k
    }
    params = {n for n, _ in head.named_parameters()}
    targets = {
        k: t
        for k, t in head.state_dict(keep_vars=True).items()
        if k.startswith("model.inner.") and ".puzzle_emb." not in k
    }
    if problems := fit_problems(targets, saved):
        raise ModelCodeError(f"{path}: its decoder does not fit the model's model.inner: {problems}")
    with torch.no_grad():
        for name, tensor in targets.items():
            tensor.copy_(saved[name])
    return dict(
        path=path,
        loaded_params=[k for k in targets if k in params],
        missing_params=[],
        loaded_buffers=[k for k in targets if k not in params],
        config_status="unverified (a user's model: settings not compared)",
    )


def decoder_load_record(report) -> dict:
    """A step-0 metrics-log record of a `DecoderLoadReport`, for the H1 log check."""
    import hashlib

    digest = hashlib.sha256()
    with open(report.path, "rb") as f:  # identifies the checkpoint wherever it is moved
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return {
        "step": 0,
        "pretrained_decoder/checkpoint": report.path.name,
        "pretrained_decoder/sha256": digest.hexdigest(),
        "pretrained_decoder/params_loaded": len(report.loaded_params),
        "pretrained_decoder/params_missing": len(report.missing_params),
        "pretrained_decoder/buffers_loaded": len(report.loaded_buffers),
        "pretrained_decoder/config": report.config_status,
    }
