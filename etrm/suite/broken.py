"""Deliberately broken variants for the negative controls: each reproduces one bug the
investigation suspected, so the check that guards against it can be shown to fail."""

from __future__ import annotations

import torch

from etrm.models import ETRM, LossHead
from etrm.models.encoders import EncoderOutput


class DetachedEncoderETRM(ETRM):
    """The encoder output is detached before the decoder reads it (H2)."""

    def prefix(self, data, carry, reset):
        context, extras = super().prefix(data, carry, reset)
        return context.detach(), extras


class CachedContextETRM(ETRM):
    """Encodes a sample's demos on its first step only, then reuses that context from the
    (detached) carry: no encoder gradient once no sample resets (H2)."""

    def prefix(self, data, carry, reset):
        context, extras = super().prefix(data, carry, reset)
        if carry.context is not None:
            context = torch.where(reset.view(-1, 1, 1), context, carry.context)
        return context, {**extras, "context": context}

    def carried(self, extras):
        return {"context": extras["context"].detach()}


class PrefixIgnoringETRM(ETRM):
    """The decoder is fed zeros instead of the context, so the encoder cannot matter (H2, H7)."""

    def prefix(self, data, carry, reset):
        context, extras = super().prefix(data, carry, reset)
        return torch.zeros_like(context), extras


class NaNGradientETRM(ETRM):
    """The encoder output's gradient turns NaN on the way back, as a loss whose unused `where`
    branch is infinite makes it (the stablemax without its epsilon) (H2)."""

    def prefix(self, data, carry, reset):
        context, extras = super().prefix(data, carry, reset)
        if context.requires_grad:
            context.register_hook(lambda grad: torch.full_like(grad, torch.nan))
        return context, extras


class DemoBlindEncoder(torch.nn.Module):
    """Wraps an encoder so it sees blank demos: same output for every task (H7)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.inner = encoder
        self.config = encoder.config

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        return self.inner(torch.zeros_like(demo_inputs), torch.zeros_like(demo_labels), demo_mask, query)


class OrderSensitiveEncoder(DemoBlindEncoder):
    """Adds a position-dependent signal per demo slot, as a positional encoding over demos would (H3)."""

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        out = self.inner(demo_inputs, demo_labels, demo_mask, query)
        first = demo_inputs[:, 0, :1].float().unsqueeze(-1) * 1e-2  # depends on which demo is first
        return EncoderOutput(context=out.context + first.to(out.context.dtype), kl=out.kl)


class PaddingReadingEncoder(DemoBlindEncoder):
    """Reads every demo slot, padded or not, as if the mask were all ones (H3)."""

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        return self.inner(demo_inputs, demo_labels, torch.ones_like(demo_mask), query)


class NaNOnEmptyEncoder(DemoBlindEncoder):
    """Returns NaN for samples without a valid demo, as the origin encoder did (H3)."""

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        out = self.inner(demo_inputs, demo_labels, demo_mask, query)
        empty = ~demo_mask.bool().any(1)
        return EncoderOutput(context=torch.where(empty[:, None, None], torch.nan, out.context), kl=out.kl)


def with_encoder(head: LossHead, wrapper: type[DemoBlindEncoder]) -> LossHead:
    """The same model with its encoder wrapped by a broken variant (weights shared)."""
    head.model.encoder = wrapper(head.model.encoder)
    return head


def rebuild_as(head: LossHead, cls: type[ETRM]) -> LossHead:
    """A copy of `head` whose ACT model is of a broken class, with identical weights."""
    broken = LossHead(cls(head.config))
    broken.load_state_dict(head.state_dict())
    return broken


class TokenDroppingEncoder(DemoBlindEncoder):
    """Returns one context token too few, as a wrong puzzle_emb_len would (H3)."""

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        out = self.inner(demo_inputs, demo_labels, demo_mask, query)
        return EncoderOutput(context=out.context[:, 1:], kl=out.kl)


class LoudEncoder(DemoBlindEncoder):
    """Context scaled up 100x: the decoder sees inputs far off its training scale (H3)."""

    def forward(self, demo_inputs, demo_labels, demo_mask, query=None) -> EncoderOutput:
        out = self.inner(demo_inputs, demo_labels, demo_mask, query)
        return EncoderOutput(context=out.context * 100, kl=out.kl)


# --- evaluators (H6) --------------------------------------------------------------------------
from etrm.evaluation import ArcEvaluator  # noqa: E402  (kept beside the evaluator variants)


class LastBatchOnlyEvaluator(ArcEvaluator):
    """Forgets earlier batches' votes: results depend on how predictions are batched."""

    def update(self, batch, outputs):
        self._votes.clear()
        super().update(batch, outputs)


class NoGatherEvaluator(ArcEvaluator):
    """Scores each rank's own predictions without gathering them to rank 0."""

    def result(self, save_dir=None, group=None):
        self._round_closed = True
        return self._score(self._votes, self._grids, self._num_predictions)


class NoInverseEvaluator(ArcEvaluator):
    """Treats every puzzle as the original: augmented predictions are never undone."""

    def _identifier(self, identifier):
        task, _ = super()._identifier(identifier)
        return task, type(_)()


class ConfidenceOnlyEvaluator(ArcEvaluator):
    """Counts each distinct answer once, so confidence beats the majority."""

    def update(self, batch, outputs):
        super().update(batch, outputs)
        for candidates in self._votes.values():
            for answer, qs in candidates.items():
                candidates[answer] = [max(qs)]


class SilentEmptyEvaluator(ArcEvaluator):
    """Reports pass@1 = 0 for an evaluation without predictions instead of raising."""

    def result(self, save_dir=None, group=None):
        if not self._votes:
            from types import SimpleNamespace

            return SimpleNamespace(metrics={"ARC/pass@1": 0.0})
        return super().result(save_dir, group)


# --- datasets (H5) ----------------------------------------------------------------------------
import dataclasses  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from etrm.data.datasets import FewShotPuzzleDataset  # noqa: E402


def plant_in_train_split(folder: Path, name: str, inputs: np.ndarray, labels: np.ndarray) -> None:
    """Append one puzzle named `name` (its own group, one row of tokens) to a build's train split, in place."""
    split = folder / "train"
    names = json.loads((folder / "identifiers.json").read_text())
    if name not in names:
        names.append(name)
        (folder / "identifiers.json").write_text(json.dumps(names))
    arrays = {p.name.split("__")[1][:-4]: np.load(p) for p in split.glob("all__*.npy")}
    rows = len(arrays["inputs"])
    arrays["inputs"] = np.concatenate([arrays["inputs"], inputs[None]])
    arrays["labels"] = np.concatenate([arrays["labels"], labels[None]])
    arrays["puzzle_identifiers"] = np.append(arrays["puzzle_identifiers"], names.index(name)).astype(np.int32)
    arrays["puzzle_indices"] = np.append(arrays["puzzle_indices"], rows + 1).astype(np.int32)
    arrays["group_indices"] = np.append(arrays["group_indices"], len(arrays["puzzle_identifiers"])).astype(np.int32)
    if "num_demos" in arrays:
        arrays["num_demos"] = np.append(arrays["num_demos"], 0).astype(np.int32)
    for key, value in arrays.items():
        np.save(split / f"all__{key}.npy", value)
    meta = json.loads((split / "dataset.json").read_text())
    meta.update(
        num_puzzle_identifiers=len(names),
        total_groups=meta["total_groups"] + 1,
        total_puzzles=meta["total_puzzles"] + 1,
    )
    (split / "dataset.json").write_text(json.dumps(meta))


def plant_evaluation_example(data_dir: Path, out_dir: Path, task: str | None = None) -> Path:
    """A copy of a few-shot build with one evaluation test pair appended to the train split,
    under its task's name: the leak a strict few-shot build must not have."""
    from etrm.data.grids import encode_grid

    out = Path(shutil.copytree(data_dir, out_dir))
    puzzles = json.loads((out / "test_puzzles.json").read_text())
    task = task or sorted(puzzles)[0]
    pair = puzzles[task]["test"][0]
    canvas = int(round(json.loads((out / "train" / "dataset.json").read_text())["seq_len"] ** 0.5))
    plant_in_train_split(out, task, encode_grid(pair["input"], canvas), encode_grid(pair["output"], canvas))
    return out


class DemoAsQueryDataset(FewShotPuzzleDataset):
    """Iterates every row of a puzzle, demos included, as a query: a query then sits among its demos."""

    def _ranges(self, arrays):
        return arrays.all_ranges()


class FullMaskDataset(FewShotPuzzleDataset):
    """Marks every demo slot valid, padded or not."""

    def _collate(self, arrays, rows, puzzles):
        batch = super()._collate(arrays, rows, puzzles)
        batch["demo_mask"] = torch.ones_like(batch["demo_mask"])
        return batch


class PuzzleLimitedDataset(FewShotPuzzleDataset):
    """`max_groups` counts individual augmentations instead of whole tasks."""

    def __init__(self, *args, max_groups=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.sets = [
            dataclasses.replace(s, group_indices=np.arange(len(s.puzzle_identifiers) + 1)).limit_groups(max_groups)
            for s in self.sets
        ]


class UnshardedDataset(FewShotPuzzleDataset):
    """Every rank reads rank 0's rows: batches are duplicated across ranks."""

    def __init__(self, *args, rank=0, **kwargs):
        super().__init__(*args, rank=0, **kwargs)


class LabelledPaddingDataset(FewShotPuzzleDataset):
    """Padding rows get supervised labels (colour 0) instead of ignored ones."""

    def _collate(self, arrays, rows, puzzles):
        batch = super()._collate(arrays, rows, puzzles)
        batch["labels"][torch.from_numpy(rows < 0)] = 2
        return batch


# --- checkpoints and training (H1) ------------------------------------------------------------
from etrm.training import Trainer  # noqa: E402


def plain_prefix_loader(model, path):
    """Strips only the plain `model.inner.` prefix and loads non-strictly: with any other
    key layout nothing loads and the only sign is an ignored list of missing keys."""
    state = torch.load(path, weights_only=True, map_location="cpu")
    inner = {k.removeprefix("model.inner."): v for k, v in state.items() if k.startswith("model.inner.")}
    model = getattr(model, "_orig_mod", model)
    return model.model.inner.load_state_dict(inner, strict=False)


class ZeroGradFreezeTrainer(Trainer):
    """ "Freezes" the decoder by zeroing its gradients: AdamATan2 still applies weight decay."""

    def _discard_frozen_grads(self, frozen):
        for part in frozen:
            for _, p in self.named_params[part]:
                if p.grad is not None:
                    p.grad.zero_()
                else:
                    p.grad = torch.zeros_like(p)


def mislabelled_frozen_checkpoint(trained: Path, frozen_run: Path, out_dir: Path) -> Path:
    """Weights of a run whose decoder trained, saved with the config of a frozen-decoder run."""
    from etrm.checkpoints import sidecar_path
    from etrm.config.importer import CONFIG_FILE

    out_dir.mkdir(parents=True, exist_ok=True)
    dst = out_dir / frozen_run.name
    shutil.copy(trained, dst)
    shutil.copy(sidecar_path(frozen_run), sidecar_path(dst))
    shutil.copy(frozen_run.parent / CONFIG_FILE, out_dir / CONFIG_FILE)
    return dst


# --- training dynamics (H4) ---------------------------------------------------------------------


class SingleGroupTrainer(Trainer):
    """Puts every parameter in one group at the decoder's lr: encoder_lr_scale is ignored."""

    def _build_optimizers(self, act):
        from etrm.optim import AdamATan2

        params = [p for part in self.named_params.values() for _, p in part]
        cfg = self.config
        return [
            AdamATan2(
                [dict(params=params, lr=cfg.lr, base_lr=cfg.lr, weight_decay=cfg.weight_decay, part="decoder")],
                lr=cfg.lr,
                betas=cfg.betas,
            )
        ]


class NoExplorationETRM(ETRM):
    """Claims an exploration probability in its config but never explores."""

    def forward(self, carry, batch):
        claimed = self.config
        self.config = claimed.replace(halt_exploration_prob=0.0)
        try:
            return super().forward(carry, batch)
        finally:
            self.config = claimed
