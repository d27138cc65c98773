"""Hypothesis 7: does the encoder memorise its training tasks, and do its contexts line up
with the puzzle embeddings the decoder was trained on?

- `check_generalisation_gap`: the loss with the encoder's context on held-out tasks against
  as many training-split tasks (from `measure_h7`), and how often a held-out puzzle's
  nearest context belongs to another task (held-out or training) rather than to one of its
  own augmentations. An encoder that maps new demonstrations onto tasks it already knows
  shows both: H7 evidence.
- `check_embedding_alignment`: a ridge map from encoder contexts to the TRM's trained puzzle
  embeddings, fitted on training-split puzzles, scored by R^2 on held-out puzzles; H7
  evidence when it misses (R^2 < MIN_R2) and the embeddings do steer the decoder better than
  the encoder's contexts (on half the tasks), as contexts unlike them are no fault otherwise.
- `trm_puzzle_prefixes`: those embeddings by puzzle name, through the TRM dataset's
  identifiers.json.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from etrm.checks import h7_statistics as stats
from etrm.checks.h7_encoder_capacity import MIN_RELATIVE_SPREAD
from etrm.checks.h7_headroom import H, H7Measurement
from etrm.checks.result import CheckResult

GAP_RATIO = 1.5  # held-out loss this many times the training loss: a gap
MAX_CONFUSION = 0.5  # share of held-out puzzles nearer another task than their own augmentations
MIN_R2 = 0.25  # held-out R^2 of the ridge map below this: contexts off the decoder's embeddings
RIDGE = 1e-2  # ridge strength, relative to the mean squared norm of the centred contexts


def confusion_rate(contexts: torch.Tensor, tasks: Sequence[str], others: torch.Tensor | None) -> tuple[float, int]:
    """(share of puzzles whose nearest context of another task is closer than their nearest own
    augmentation, puzzles counted); only puzzles with another augmentation of their task count.
    `others`: contexts of further tasks (the training split), candidates as "another task"."""
    pool = contexts if others is None or not len(others) else torch.cat([contexts, others])
    pool_tasks = list(tasks) + ["\0train"] * (len(pool) - len(contexts))
    dist = torch.cdist(contexts.double(), pool.double())
    confused = counted = 0
    for i, task in enumerate(tasks):
        own = [j for j, t in enumerate(pool_tasks) if t == task and j != i]
        other = [j for j, t in enumerate(pool_tasks) if t != task]
        if not own or not other:
            continue
        counted += 1
        confused += bool(dist[i, other].min() < dist[i, own].min() * (1 - 1e-6))  # a tie is not nearer
    return (confused / counted if counted else float("nan")), counted


def check_generalisation_gap(m: H7Measurement) -> CheckResult:
    name = "generalisation_gap"
    if m.no_claim:
        return CheckResult.inconclusive(H, name, m.no_claim)
    heldout = [s.encoder_loss for s in m.tasks]
    if not heldout or not m.train_losses:
        return CheckResult.inconclusive(H, name, "needs held-out and training-split tasks to compare")
    train_loss, heldout_loss = sum(m.train_losses) / len(m.train_losses), sum(heldout) / len(heldout)
    ratio = heldout_loss / max(train_loss, 1e-12)
    confusion, counted = confusion_rate(m.heldout_contexts, m.heldout_context_tasks, m.train_contexts)
    numbers = {
        "train_loss": train_loss,
        "heldout_loss": heldout_loss,
        "gap_ratio": ratio,
        "confusion_rate": confusion,
        "confusion_puzzles": counted,
        "train_tasks": len(m.train_losses),
        "heldout_tasks": len(heldout),
        "act_steps": m.act_steps,
        **{f"train/{t}/encoder_loss": v for t, v in zip(m.train_tasks, m.train_losses)},
        **{f"heldout/{s.task}/encoder_loss": s.encoder_loss for s in m.tasks},
    }
    spread = float(m.heldout_contexts.std(0).mean() / m.heldout_contexts.square().mean().sqrt().clamp_min(1e-12))
    if spread < MIN_RELATIVE_SPREAD:
        return CheckResult.inconclusive(
            H,
            name,
            f"the encoder's contexts do not vary across held-out puzzles (spread "
            f"{spread:.2g} of their RMS), so it cannot map them onto known tasks: "
            "context_varies_across_tasks is the check for that",
            numbers,
        )
    facts = (
        f"loss after {m.act_steps} ACT steps with the encoder's context {heldout_loss:.3g} on {len(heldout)} held-out tasks vs {train_loss:.3g} "
        f"on {len(m.train_losses)} training tasks ({ratio:.2f}x; a gap from {GAP_RATIO:g}x)"
    )
    if not counted:
        return CheckResult.inconclusive(
            H,
            name,
            f"{facts}; no held-out task has two augmentations loaded, so the nearest-context test cannot run",
            numbers,
        )
    facts += (
        f"; {confusion:.0%} of {counted} held-out puzzles lie nearer another task's context than their own "
        f"augmentations' (memorising from {MAX_CONFUSION:.0%})"
    )
    p_value = stats.greater_test(heldout, m.train_losses)
    numbers.update(p_value=p_value, alpha=m.alpha, test="one-sided Mann-Whitney U, held-out above training losses")
    least = 1 / math.comb(len(heldout) + len(m.train_losses), len(heldout))
    if least > m.alpha:
        return CheckResult.inconclusive(
            H,
            name,
            f"{facts}; {len(heldout)} held-out and {len(m.train_losses)} training tasks cannot reach significance "
            f"(the least p-value of a Mann-Whitney test on them is {least:.3g} > alpha {m.alpha:g}): pass "
            "--h7-tasks 4 or more",
            numbers,
        )
    facts += f"; held-out losses above training ones: Mann-Whitney p = {p_value:.3g} (alpha {m.alpha:g})"
    memorises = ratio >= GAP_RATIO and confusion >= MAX_CONFUSION and p_value <= m.alpha
    return CheckResult.from_condition(
        H,
        name,
        not memorises,
        ("the encoder maps new demonstrations onto tasks it knows: " if memorises else "") + facts,
        numbers,
    )


def ridge_r2(
    x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor
) -> tuple[float, float]:
    """(R^2 on the training rows, R^2 on the test rows) of a ridge map x -> y fitted on the training rows."""
    x_train, y_train, x_test, y_test = (t.double() for t in (x_train, y_train, x_test, y_test))
    x_mean, y_mean = x_train.mean(0), y_train.mean(0)
    xc, yc = x_train - x_mean, y_train - y_mean
    gram = xc @ xc.T
    lam = RIDGE * float(gram.diagonal().mean().clamp_min(1e-12))
    weights = xc.T @ torch.linalg.solve(gram + lam * torch.eye(len(gram), dtype=gram.dtype), yc)

    def r2(x, y):
        residual = (y - ((x - x_mean) @ weights + y_mean)).square().sum()
        total = (y - y.mean(0)).square().sum().clamp_min(1e-24)
        return float(1 - residual / total)

    return r2(x_train, y_train), r2(x_test, y_test)


def check_embedding_alignment(
    m: H7Measurement,
    train_names: Sequence[str],
    heldout_names: Sequence[str],
    trm_prefixes: Mapping[str, torch.Tensor] | None,
) -> CheckResult:
    """`*_names`: the puzzle name of each row of `m.train_contexts` / `m.heldout_contexts`."""
    name = "embedding_alignment"
    if m.no_claim:
        return CheckResult.inconclusive(H, name, m.no_claim)
    if not trm_prefixes:
        return CheckResult.inconclusive(H, name, f"no TRM puzzle embeddings: {m.trm_note or 'not given'}")
    train = [i for i, n in enumerate(train_names) if n in trm_prefixes]
    test = [i for i, n in enumerate(heldout_names) if n in trm_prefixes]
    if len(train) < 2 or len(test) < 2:
        return CheckResult.inconclusive(
            H, name, f"the TRM's dataset names {len(train)} training and {len(test)} held-out puzzles; need two of each"
        )
    target = lambda names, rows: torch.stack([trm_prefixes[names[i]].float().flatten() for i in rows])  # noqa: E731
    fit, held = ridge_r2(
        m.train_contexts[train], target(train_names, train), m.heldout_contexts[test], target(heldout_names, test)
    )
    # Contexts unlike the embeddings are a weakness only where the embeddings steer the decoder better.
    scored = [s for s in m.tasks if s.trm_loss is not None]
    trm_better = sum(s.better(s.trm_loss, s.trm_exact) for s in scored)
    p_value = stats.sign_test(trm_better, len(scored))
    off = held < MIN_R2 and p_value <= m.alpha
    return CheckResult.from_condition(
        H,
        name,
        not off,
        f"a ridge map from encoder contexts to the TRM's puzzle embeddings, fitted on {len(train)} training puzzles "
        f"(R^2 {fit:.2f}), gives R^2 {held:.2f} on {len(test)} held-out puzzles (aligned from {MIN_R2:g}); the TRM's "
        f"embedding is clearly better than the encoder's context on {trm_better} of {len(scored)} tasks "
        f"(one-sided sign test p = {p_value:.3g}; a weakness where significant at alpha {m.alpha:g})"
        + (": the encoder's contexts miss what the decoder reads" if off else ""),
        {
            "train_r2": fit,
            "heldout_r2": held,
            "train_puzzles": len(train),
            "heldout_puzzles": len(test),
            "trm_better_tasks": trm_better,
            "p_value": p_value,
            "alpha": m.alpha,
        },
    )


def trm_puzzle_prefixes(
    trm_checkpoint: Path, trm_data_dir: Path | None, puzzle_emb_len: int, hidden_size: int
) -> tuple[dict[str, torch.Tensor] | None, str]:
    """(puzzle name -> the TRM's (P, H) prefix, "") or (None, why not)."""
    from etrm.checkpoints import normalize_key, read_state_dict

    if trm_data_dir is None:
        return None, f"{trm_checkpoint}: no TRM dataset to map tasks to its puzzle identifiers (pass --trm-data DIR)"
    ids_file = Path(trm_data_dir) / "identifiers.json"
    if not ids_file.is_file():
        return None, f"{ids_file}: not found, so tasks cannot be mapped to the TRM's puzzle identifiers"
    names = json.loads(ids_file.read_text())
    state = {normalize_key(k): v for k, v in read_state_dict(trm_checkpoint).items()}
    weights = state.get("model.inner.puzzle_emb.weights")
    if weights is None:
        return None, f"{trm_checkpoint}: no trained puzzle embedding (model.inner.puzzle_emb.weights)"
    if weights.shape[0] < len(names) or weights.shape[1] > puzzle_emb_len * hidden_size:
        return None, (
            f"{trm_checkpoint}: puzzle embedding {tuple(weights.shape)} does not fit {ids_file} "
            f"({len(names)} names) and a {puzzle_emb_len}x{hidden_size} prefix"
        )
    pad = puzzle_emb_len * hidden_size - weights.shape[1]
    rows = torch.nn.functional.pad(weights.float(), (0, pad)).view(-1, puzzle_emb_len, hidden_size)
    return {str(name): rows[i] for i, name in enumerate(names) if i > 0}, ""


def trm_data_for(trm_checkpoint: Path, given: Path | None) -> Path | None:
    """The TRM's dataset: `given`, else the first `data_paths` entry of the all_config.yaml
    beside the checkpoint that resolves (absolute, or relative to that folder or a parent)."""
    if given is not None:
        return given
    config = Path(trm_checkpoint).parent / "all_config.yaml"
    if not config.is_file():
        return None
    import yaml

    try:
        paths = (yaml.safe_load(config.read_text()) or {}).get("data_paths") or []
    except yaml.YAMLError:
        return None
    for entry in paths if isinstance(paths, list) else [paths]:
        for base in [Path("."), *list(config.parents)[:4]]:
            candidate = base / str(entry)
            if (candidate / "identifiers.json").is_file():
                return candidate.resolve()
    return None
