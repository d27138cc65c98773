"""Hypothesis 7 answered: is it the encoder, or can no context steer the decoder?

`measure_h7` scores, per held-out task, the test query with (a) the encoder's context,
(b) a free context started there and optimised for K small steps on the task's
demonstrations only (its first DEMO_QUERIES demonstrations as queries, all of them as
demos; the test query is never seen), and (c) the TRM's trained puzzle embedding for the task's identifier, where
a TRM checkpoint and its dataset's identifiers.json give one. It also scores the encoder's
context on as many training-split tasks. Every score is taken after the same number of ACT
steps (`act_steps`, DEFAULT_ACT_STEPS; the full episode when it is halt_max_steps or more), so
the three contexts are compared alike. Three checks read it:

- `check_context_headroom` (H7): (b) or (c) clearly better than (a) on at least half the
  tasks is evidence that the decoder can be steered and the encoder is what fails;
- `check_decoder_steerable` (its own row, "context_steering"): no context better and none
  solving is the finding "the decoder cannot be steered by a context", against the design's
  premise and not H7 evidence;
- `check_generalisation_gap` (etrm.checks.h7_generalisation).

No claim on a decoder at chance on its own training tasks (random or untrained weights,
as in fixtures/interop): every check is inconclusive there, saying so.

Cost (README, "Hypothesis 7 answered"): at the official width one ACT step of one sample is
seconds on a CPU, so the defaults bound what a task costs: K steps of DEMO_QUERIES queries
(forward and backward) and 3 x act_steps query steps, not K steps of every demonstration and
3 full 16-step episodes. The gate in front, which every `etrm investigate` pays on random
weights, is one ACT step of GATE_TASKS training queries.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from etrm.checks import h7_probes as probes
from etrm.checks.result import CheckResult
from etrm.interface import ContextNotReplaceable, TRMInterface, as_interface

H, STEERING = "hypothesis7", "context_steering"
DEFAULT_TASKS, DEFAULT_STEPS, SEED = 4, 8, 0
# Held-out tasks by default from this hidden size on: at the official width (512) a task costs
# about two minutes on a 2-core CPU (README), four would be eight, plus what every run pays once.
LARGE_WIDTH, LARGE_WIDTH_TASKS = 256, 2
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
# "Clearly better" than (a) on a task: exact where (a) is not, or this much lower loss.
MIN_RELATIVE_GAIN = 0.25
MIN_STEERED_SHARE = 0.5  # of the tasks, for H7 evidence


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
    demo_loss_first: float  # the demonstrations' loss on the first and last optimisation step
    demo_loss_last: float

    def better(self, loss: float | None, exact: bool | None) -> bool:
        if loss is None:
            return False
        return bool(exact and not self.encoder_exact) or loss <= (1 - MIN_RELATIVE_GAIN) * self.encoder_loss

    @property
    def steered(self) -> bool:
        return self.better(self.optimised_loss, self.optimised_exact) or self.better(self.trm_loss, self.trm_exact)

    @property
    def best_loss(self) -> float:
        return min(x for x in (self.encoder_loss, self.optimised_loss, self.trm_loss) if x is not None)


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
) -> H7Measurement:
    """`heldout`/`train`: probes of the test and train split (several per task allowed: the
    first of each task is scored, all give contexts). `trm_prefixes`: puzzle name -> the
    TRM's (P, H) prefix for it; `trm_note` says why there are none. An untrained decoder
    (see `no_claim`) stops the measurement before its costly part unless not `require_trained`."""
    model = as_interface(model)
    started = time.perf_counter()
    act_steps = min(act_steps, model.halt_max_steps)
    bounds = dict(act_steps=act_steps, demo_queries=demo_queries)
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
    index = {id(p): i for i, p in enumerate(heldout)}
    scores = []
    from tqdm.auto import tqdm

    for probe in tqdm(firsts, desc="H7 context headroom", unit="task", disable=not progress, leave=False):
        start = heldout_ctx[index[id(probe)]]
        try:
            free, first, last = probes.optimise_context(
                model, probe, start, steps, max_demos, device, seed, queries=demo_queries
            )
        except ContextNotReplaceable as err:
            return H7Measurement(model.name, steps, chance, **bounds, unsupported=f"{model.name}: {err}")
        contexts = [start, free.to(start.dtype)]
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
                first,
                last,
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
    )


def _first_per_task(items: Sequence[probes.TaskProbe]) -> list[probes.TaskProbe]:
    seen: dict[str, probes.TaskProbe] = {}
    for probe in items:
        seen.setdefault(probe.task, probe)
    return list(seen.values())


def task_numbers(m: H7Measurement) -> dict[str, float | bool | str]:
    """Per task `task/<id>/<field>` and the totals (README: "H7 verdict-JSON fields")."""
    out: dict[str, float | bool | str] = {}
    for s in m.tasks:
        for name in (
            "encoder_loss",
            "encoder_exact",
            "optimised_loss",
            "optimised_exact",
            "trm_loss",
            "trm_exact",
            "demo_loss_first",
            "demo_loss_last",
        ):
            value = getattr(s, name)
            out[f"task/{s.task}/{name}"] = "n/a" if value is None else value
        out[f"task/{s.task}/steered"] = s.steered
    n = max(1, len(m.tasks))
    trm = [s for s in m.tasks if s.trm_loss is not None]
    out.update(
        tasks=len(m.tasks),
        steps=m.steps,
        act_steps=m.act_steps,
        demo_queries=m.demo_queries,
        chance_loss=m.chance_loss,
        seconds=m.seconds,
        mean_encoder_loss=sum(s.encoder_loss for s in m.tasks) / n,
        mean_optimised_loss=sum(s.optimised_loss for s in m.tasks) / n,
        mean_trm_loss=sum(s.trm_loss for s in trm) / len(trm) if trm else "n/a",
        encoder_exact=sum(s.encoder_exact for s in m.tasks),
        optimised_exact=sum(s.optimised_exact for s in m.tasks),
        trm_exact=sum(bool(s.trm_exact) for s in trm) if trm else "n/a",
        trm_tasks=len(trm),
        tasks_steered=sum(s.steered for s in m.tasks),
        headroom_loss=sum(s.encoder_loss - s.best_loss for s in m.tasks) / n,
        trm_embedding=m.trm_note or "scored",
    )
    return out


def _summary(m: H7Measurement) -> str:
    n = len(m.tasks)
    nums = task_numbers(m)
    trm = (
        f", TRM embedding {nums['mean_trm_loss']:.3g} ({nums['trm_exact']}/{nums['trm_tasks']} exact)"
        if nums["trm_tasks"]
        else f"; (c) TRM embedding not scored: {m.trm_note}"
    )
    return (
        f"test-query loss after {m.act_steps} ACT steps over {n} held-out tasks: encoder context "
        f"{nums['mean_encoder_loss']:.3g} ({nums['encoder_exact']}/{n} exact), optimised ({m.steps} steps on "
        f"{m.demo_queries} demonstrations as queries) "
        f"{nums['mean_optimised_loss']:.3g} ({nums['optimised_exact']}/{n} exact){trm}"
    )


def _unscorable(m: H7Measurement, hypothesis: str, name: str) -> CheckResult | None:
    """Inconclusive when the measurement makes no claim (untrained weights) or scored no task."""
    if m.no_claim:
        return CheckResult.inconclusive(hypothesis, name, m.no_claim, task_numbers(m) if m.tasks else {})
    if not m.tasks:
        return CheckResult.inconclusive(hypothesis, name, "no held-out task to score")
    return None


def check_context_headroom(m: H7Measurement) -> CheckResult:
    """H7 evidence when the optimised context or the TRM's embedding is clearly better than
    the encoder's on at least half of the held-out tasks; inconclusive when nothing steers."""
    name = "context_headroom"
    if unscorable := _unscorable(m, H, name):
        return unscorable
    nums, steered = task_numbers(m), sum(s.steered for s in m.tasks)
    if steered >= max(1, math.ceil(MIN_STEERED_SHARE * len(m.tasks))):
        return CheckResult.fail(
            H,
            name,
            f"the decoder can be steered and the encoder is what fails: on {steered} of "
            f"{len(m.tasks)} tasks another context is clearly better (headroom "
            f"{nums['headroom_loss']:.3g} loss per task); {_summary(m)}",
            nums,
        )
    if steered or _encoder_solves(m):
        return CheckResult.ok(
            H,
            name,
            f"little headroom: another context is clearly better on {steered} of "
            f"{len(m.tasks)} tasks (evidence from {MIN_STEERED_SHARE:.0%}); {_summary(m)}",
            nums,
        )
    return CheckResult.inconclusive(
        H,
        name,
        f"no context tried does clearly better or solves the tasks, so the "
        f"encoder cannot be judged by them (see context_steering); {_summary(m)}",
        nums,
    )


def _encoder_solves(m: H7Measurement) -> bool:
    return sum(s.encoder_exact for s in m.tasks) >= math.ceil(MIN_STEERED_SHARE * len(m.tasks))


CANNOT_STEER = "the decoder cannot be steered by a context"


def check_decoder_steerable(m: H7Measurement) -> CheckResult:
    """The design's premise: some context makes this decoder solve or clearly improve the
    held-out tasks. Fails ("cannot be steered") when neither the optimised context nor the
    TRM's embedding beats the encoder's and none solves the tasks."""
    name = "decoder_steerable"
    if unscorable := _unscorable(m, STEERING, name):
        return unscorable
    nums, steered = task_numbers(m), sum(s.steered for s in m.tasks)
    if steered or _encoder_solves(m):
        how = (
            f"another context is clearly better on {steered} tasks" if steered else "the encoder's context solves them"
        )
        return CheckResult.ok(STEERING, name, f"a context steers the decoder: {how}; {_summary(m)}", nums)
    return CheckResult.fail(
        STEERING,
        name,
        f"{CANNOT_STEER}: neither the optimised context nor the TRM's embedding "
        f"does clearly better than the encoder's, and none solves the tasks; "
        f"{_summary(m)}",
        nums,
    )
