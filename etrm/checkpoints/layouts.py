"""Key layouts: the prefixes in front of a checkpoint's keys and how they are stripped.

Layouts. The official trainer saves `state_dict()` of `torch.compile(ACTLossHead(TRM))`:
keys `_orig_mod.model.inner.*` (decoder) and, for the origin ETRM,
`_orig_mod.model.encoder.*`. Without compile there is no `_orig_mod.`, under DDP there
is a `module.`, and a bare ACT model has no loss-head level `model.`. `normalize_key`
strips the wrappers (only as prefixes, in any combination) and `act_key` also the
loss-head level, so every layout maps onto `inner.*` / `encoder.*`.
"""

from __future__ import annotations

from torch import nn

WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile, DDP / DataParallel
LOSS_HEAD_PREFIX = "model."
DECODER_PREFIX = "inner."
ENCODER_PREFIX = "encoder."
OFFICIAL_PREFIX = "_orig_mod.model."
PUZZLE_EMB_PREFIX = "puzzle_emb."
# Persistent buffers of the decoder and the encoders (everything else they save is a
# parameter); tests keep these in step with the modules.
DECODER_BUFFERS = frozenset({"H_init", "L_init", "puzzle_emb.weights"})
ENCODER_BUFFERS: frozenset[str] = frozenset()


def unwrap_module(module: nn.Module) -> nn.Module:
    """The module under torch.compile (`_orig_mod`) and DDP/DataParallel (`module`) wrappers."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if isinstance(inner, nn.Module):
            module = inner
        elif isinstance(module, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            module = module.module
        else:
            return module


def split_prefix(key: str) -> tuple[str, str]:
    """(wrapper prefixes, rest): `_orig_mod.` and `module.` stripped, in any combination,
    only at the start, so a key with "module." in the middle keeps it."""
    start = 0
    while True:
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix, start):
                start += len(prefix)
                break
        else:
            return key[:start], key[start:]


def normalize_key(key: str) -> str:
    """`key` without its `_orig_mod.` / `module.` prefixes (loss-head level kept)."""
    return split_prefix(key)[1]


def act_key(key: str) -> str:
    """`key` relative to the ACT model (`inner.*`, `encoder.*`): wrappers and the loss
    head's `model.` level stripped. (The ACT model has no submodule called `model`.)"""
    rest = normalize_key(key)
    return rest[len(LOSS_HEAD_PREFIX) :] if rest.startswith(LOSS_HEAD_PREFIX) else rest


def key_layout(key: str) -> str:
    """The prefix in front of `inner.` / `encoder.`, e.g. "_orig_mod.model." (official)."""
    return key[: len(key) - len(act_key(key))]


def classify_key(key: str) -> tuple[str, str, str]:
    """(component, name, kind): component "decoder" / "encoder" / "other", the name inside
    the component, and "param" / "buffer" / "unknown" by the known buffer names."""
    rel = act_key(key)
    if rel.startswith(DECODER_PREFIX):
        name = rel[len(DECODER_PREFIX) :]
        return "decoder", name, "buffer" if name in DECODER_BUFFERS else "param"
    if rel.startswith(ENCODER_PREFIX):
        name = rel[len(ENCODER_PREFIX) :]
        return "encoder", name, "buffer" if name in ENCODER_BUFFERS else "param"
    return "other", rel, "unknown"
