"""H7's measurement: per held-out task, the test query scored with (a) the encoder's context,
(b) a free context started there and searched for K small steps on the task's demonstrations
only (`etrm.checks.context_search`: its first DEMO_QUERIES demonstrations as queries, all of
them as demos; the test query is never seen), and (c) the TRM's trained puzzle embedding for
the task's identifier, where a TRM checkpoint and its dataset's identifiers.json give one; and
the encoder's context on as many training-split tasks. Every score is taken after the same
number of ACT steps (`act_steps`, DEFAULT_ACT_STEPS; the full episode when it is
halt_max_steps or more), so the three contexts are compared alike. The checks that read it
are in `etrm.checks.h7_headroom` and `etrm.checks.h7_generalisation`.

No claim on a decoder at chance on its own training tasks (random or untrained weights, as in
fixtures/interop): the measurement stops at that gate, and every check says so.

Cost (docs/h7.md, "Cost"): at the official width one ACT step of one sample is seconds on a
CPU, so the defaults bound what a task costs: K steps of DEMO_QUERIES queries (forward and
backward; the encoder runs once per task, its output replayed) and 3 x act_steps query steps.
The gate in front, which every `etrm investigate` pays on random weights, is one ACT step of
GATE_TASKS training queries.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from etrm.checks import context_search as search
from etrm.checks import h7_probes as probes
from etrm.checks import h7_statistics as stats
from etrm.interface import ContextNotReplaceable, TRMInterface, as_interface

H, STEERING = "hypothesis7", "context_steering"
# Held-out tasks by default: the verdicts rest on a sign test across tasks, which reaches
# alpha 0.05 only from 5 tasks on (h7_statistics.tasks_needed); 8 let one task in eight go
# the other way. From LARGE_WIDTH on, the fewest that can reach the level: at the official
# width (512) a task costs about a minute on a 2-core CPU (docs/h7.md, "Cost").
DEFAULT_TASKS, DEFAULT_STEPS, SEED = 8, search.DEFAULT_SEARCH_STEPS, 0
LARGE_WIDTH, LARGE_WIDTH_TASKS = 256, 5
# Scores after this many ACT steps (all three contexts and the training tasks alike): the
# official episode is 16, whose later steps refine what the first ones decide, at 4x the cost.
DEFAULT_ACT_STEPS = 4
# Demonstrations used as queries per optimisation step (all of them are still the demos):
# ARC tasks have 2-5, and each query costs a forward and backward ACT step.
DEMO_QUERIES = 2
# Training queries the trained-decoder gate scores: random weights sit at chance on every one,
# so two decide "untrained"; two rather than one so a single hard task cannot void a trained model.
GATE_TASKS = 2
# A decoder whose mean training-split loss is above this fraction of ln(vocab) is untrained.
TRAINED_FRACTION = 0.6
# "Clearly better" than (a) on a task where (a) is not exact: exact, or this much lower loss.
MIN_RELATIVE_GAIN = 0.25


@dataclass(frozen=True)
class TaskScores:
    """One held-out task's test query under the three contexts (None: not available)."""

    task: str
    encoder_loss: float
    encoder_exact: bool
    optimised_loss: float
    optimised_exact: bool
    trm_loss: float | None
    trm_exact: bool | None
    demo_loss_start: float  # the demonstrations' first-ACT-step loss at the start and at the searched context
    demo_loss_searched: float
    search_lowered: bool  # the search lowered the demonstrations' loss (else it says nothing here)

    def better(self, loss: float | None, exact: bool | None) -> bool:
        """Clearly better than the encoder's context: exact, or MIN_RELATIVE_GAIN lower loss, and
        never where the encoder's own answer is already exact (nothing left to gain there)."""
        if loss is None or self.encoder_exact:
            return False
        return bool(exact) or loss <= (1 - MIN_RELATIVE_GAIN) * self.encoder_loss

    @property
    def steered(self) -> bool:
        return self.better(self.optimised_loss, self.optimised_exact) or self.better(self.trm_loss, self.trm_exact)

    @property
    def best_loss(self) -> float:
        return min(x for x in (self.encoder_loss, self.optimised_loss, self.trm_loss) if x is not None)

    @property
    def relative_gain(self) -> float:
        """The headroom on this task: the best other context's loss below the encoder's, relative
        to it (0 where the encoder's answer is already exact; negative where both do worse)."""
        if self.encoder_exact:
            return 0.0
        other = min(x for x in (self.optimised_loss, self.trm_loss) if x is not None)
        return (self.encoder_loss - other) / max(self.encoder_loss, 1e-12)


@dataclass(frozen=True)
class H7Measurement:
    model: str
    steps: int
    chance_loss: float
    act_steps: int = DEFAULT_ACT_STEPS  # ACT steps every score is taken after
    demo_queries: int = DEMO_QUERIES
    tasks: list[TaskScores] = field(default_factory=list)
    train_losses: list[float] = field(default_factory=list)  # encoder context, training-split tasks (the
    # first ACT step's of GATE_TASKS only when the measurement stopped at the trained-decoder gate)
    train_tasks: list[str] = field(default_factory=list)
    heldout_contexts: torch.Tensor | None = None  # (n, P*H) every loaded held-out puzzle
    heldout_context_tasks: list[str] = field(default_factory=list)
    train_contexts: torch.Tensor | None = None
    trm_note: str = ""  # why (c) is missing, if it is
    unsupported: str = ""  # why no check may claim anything, if so
    seconds: float = 0.0
    search_scale: float = math.nan  # the search's scale (the step is STEP_FRACTION of it) and its source
    search_scale_source: str = ""
    alpha: float = stats.ALPHA
    seed: int = SEED

    @property
    def trained(self) -> bool:
        return (
            bool(self.train_losses)
            and sum(self.train_losses) / len(self.train_losses) < TRAINED_FRACTION * self.chance_loss
        )

    @property
    def no_claim(self) -> str:
        """Why no H7 check may claim anything here ("" when they may)."""
        if self.unsupported:
            return self.unsupported
        if not self.trained:
            mean = sum(self.train_losses) / max(1, len(self.train_losses))
            return (
                f"no claim: on {len(self.train_losses)} of its own training tasks the model's first-step loss is "
                f"{mean:.3g}, {mean / self.chance_loss:.0%} of chance (ln vocab = {self.chance_loss:.3g}; trained "
                f"below {TRAINED_FRACTION:.0%}): random or untrained weights say nothing about the encoder"
            )
        return ""


def default_tasks(model: TRMInterface) -> int:
    """DEFAULT_TASKS, or LARGE_WIDTH_TASKS for a model of hidden size LARGE_WIDTH or more."""
    hidden = as_interface(model).hidden_size
    return LARGE_WIDTH_TASKS if hidden is not None and hidden >= LARGE_WIDTH else DEFAULT_TASKS


def measure_h7(
    model: TRMInterface,
    heldout: Sequence[probes.TaskProbe],
    train: Sequence[probes.TaskProbe],
    *,
    steps: int = DEFAULT_STEPS,
    act_steps: int = DEFAULT_ACT_STEPS,
    demo_queries: int = DEMO_QUERIES,
    max_demos: int,
    trm_prefixes: Mapping[str, torch.Tensor] | None = None,
    trm_note: str = "",
    device: str | torch.device = "cpu",
    seed: int = SEED,
    progress: bool = True,
    require_trained: bool = True,
    alpha: float = stats.ALPHA,
) -> H7Measurement:
    """`heldout`/`train`: probes of the test and train split (several per task allowed: the
    first of each task is scored, all give contexts). `trm_prefixes`: puzzle name -> the
    TRM's (P, H) prefix for it; `trm_note` says why there are none. An untrained decoder
    (see `no_claim`) stops the measurement before its costly part unless not `require_trained`."""
    model = as_interface(model)
    started = time.perf_counter()
    act_steps = min(act_steps, model.halt_max_steps)
    bounds = dict(act_steps=act_steps, demo_queries=demo_queries, alpha=alpha, seed=seed)
    if why := model.missing("encoder"):
        return H7Measurement(model.name, steps, math.nan, **bounds, unsupported=why)
    firsts = _first_per_task(heldout)
    train_firsts = _first_per_task(train)[: len(firsts)]  # the same number of samples
    # The gate reads the first ACT step (deep supervision trains every step) of GATE_TASKS
    # queries: an untrained decoder costs a fraction of one query episode, not the measurement.
    vocab: list[int] = []
    first_step, _ = probes.episode_scores(
        model, probes.query_batch(train_firsts[:GATE_TASKS], max_demos, device=device), act_steps=1, vocab=vocab
    )
    chance = probes.chance_loss(vocab[0])
    gate = H7Measurement(
        model.name, steps, chance, **bounds, train_losses=first_step, seconds=time.perf_counter() - started
    )
    if require_trained and not gate.trained:
        return gate
    train_losses, _ = probes.episode_scores(
        model, probes.query_batch(train_firsts, max_demos, device=device), act_steps=act_steps
    )
    heldout_ctx = model.first_context(probes.query_batch(heldout, max_demos, device=device))
    train_ctx = model.first_context(probes.query_batch(train, max_demos, device=device))
    scale = search.search_scale(model, trm_prefixes, torch.cat([heldout_ctx, train_ctx]))
    index = {id(p): i for i, p in enumerate(heldout)}
    scores = []
    from tqdm.auto import tqdm

    for probe in tqdm(firsts, desc="H7 context headroom", unit="task", disable=not progress, leave=False):
        start = heldout_ctx[index[id(probe)]]
        try:
            found = probes.optimise_context(
                model, probe, start, steps, max_demos, scale, device, seed, queries=demo_queries
            )
        except ContextNotReplaceable as err:
            return H7Measurement(model.name, steps, chance, **bounds, unsupported=f"{model.name}: {err}")
        contexts = [start, found.contexts[0].to(start.dtype)]
        trm = trm_prefixes.get(probe.name) if trm_prefixes else None
        if trm is not None:
            contexts.append(trm.to(device=start.device, dtype=start.dtype))
        batch = probes.query_batch([probe], max_demos, copies=len(contexts), device=device)
        losses, exact = probes.episode_scores(model, batch, torch.stack(contexts), act_steps=act_steps)
        scores.append(
            TaskScores(
                probe.task,
                losses[0],
                exact[0],
                losses[1],
                exact[1],
                losses[2] if trm is not None else None,
                exact[2] if trm is not None else None,
                found.start_loss[0],
                found.searched_loss[0],
                found.lowered[0],
            )
        )
    if trm_prefixes is not None and not any(s.trm_loss is not None for s in scores):
        trm_note = trm_note or "the TRM's dataset names none of the held-out puzzles"
    return H7Measurement(
        model.name,
        steps,
        chance,
        act_steps,
        demo_queries,
        scores,
        train_losses,
        [p.task for p in train_firsts],
        heldout_ctx.float().flatten(1).cpu(),
        [p.task for p in heldout],
        train_ctx.float().flatten(1).cpu(),
        trm_note,
        seconds=time.perf_counter() - started,
        search_scale=scale.rms if scale else math.nan,
        search_scale_source=scale.source if scale else "no scale found: the search took no step",
        alpha=alpha,
        seed=seed,
    )


def _first_per_task(items: Sequence[probes.TaskProbe]) -> list[probes.TaskProbe]:
    seen: dict[str, probes.TaskProbe] = {}
    for probe in items:
        seen.setdefault(probe.task, probe)
    return list(seen.values())


TRAIN_AUGMENTATIONS = 4  # training-split puzzles per task: the ridge map's samples and "another task"
MIN_TRAIN_TASKS = 8  # training tasks whose contexts are read (at least; as many as held-out ones if more)


@dataclass(frozen=True)
class H7Case:
    measurement: H7Measurement
    train_names: list[str]
    heldout_names: list[str]
    trm_prefixes: dict[str, torch.Tensor] | None


def measure_case(
    model: TRMInterface,
    config,
    data_dir,
    prefixes,
    note: str,
    *,
    tasks: int | None,
    steps: int,
    act_steps: int = DEFAULT_ACT_STEPS,
    device: str = "cpu",
    progress: bool = True,
    require_trained: bool = True,
    alpha: float = stats.ALPHA,
) -> H7Case:
    """`tasks` held-out tasks (two puzzles each; None: `default_tasks`, fewer at large
    widths) and at least MIN_TRAIN_TASKS training tasks, measured."""
    tasks = default_tasks(model) if tasks is None else tasks
    heldout = probes.load_task_probes(data_dir, "test", num_tasks=tasks, max_demos=config.max_demos, per_task=2)
    train = probes.load_task_probes(
        data_dir,
        "train",
        num_tasks=max(tasks, MIN_TRAIN_TASKS),
        max_demos=config.max_demos,
        per_task=TRAIN_AUGMENTATIONS,
    )
    measurement = measure_h7(
        model,
        heldout,
        train,
        steps=steps,
        act_steps=act_steps,
        max_demos=config.max_demos,
        trm_prefixes=prefixes,
        trm_note=note,
        device=device,
        progress=progress,
        require_trained=require_trained,
        alpha=alpha,
    )
    return H7Case(measurement, [p.name for p in train], [p.name for p in heldout], prefixes)
