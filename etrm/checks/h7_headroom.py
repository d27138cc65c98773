"""Hypothesis 7 answered: is it the encoder, or can no context steer the decoder? The checks
on H7's measurement (`etrm.checks.h7_measure`), each resting on a test across held-out tasks
(`etrm.checks.h7_statistics`) at the measurement's level alpha:

- `check_context_headroom` (H7): (b) or (c) clearly better than (a) on significantly more
  than half the tasks (a one-sided sign test) is evidence that the decoder can be steered and
  the encoder is what fails; "little headroom" needs the search to have moved and the
  interval of the gain to stay below the margin;
- `check_decoder_steerable` (its own row, "context_steering"): no steering, shown the same
  way, is the finding "the decoder cannot be steered by a context", against the design's
  premise and not H7 evidence;
- `check_generalisation_gap` and `check_embedding_alignment` (etrm.checks.h7_generalisation).
Fewer tasks than the test can ever reach the level with make every check inconclusive,
naming how many it needs.
"""

from __future__ import annotations

from etrm.checks import context_search as search
from etrm.checks import h7_statistics as stats
from etrm.checks.h7_measure import (  # noqa: F401 (the measurement's names, where the checks' users look)
    DEFAULT_ACT_STEPS,
    DEFAULT_STEPS,
    GATE_TASKS,
    MIN_RELATIVE_GAIN,
    STEERING,
    H,
    H7Measurement,
    TaskScores,
    default_tasks,
    measure_h7,
)
from etrm.checks.result import CheckResult


def task_numbers(m: H7Measurement) -> dict[str, float | bool | str]:
    """Per task `task/<id>/<field>`, the totals and the statistics (docs: "H7 verdict-JSON fields")."""
    out: dict[str, float | bool | str] = {}
    for s in m.tasks:
        for name in (
            "encoder_loss",
            "encoder_exact",
            "optimised_loss",
            "optimised_exact",
            "trm_loss",
            "trm_exact",
            "demo_loss_start",
            "demo_loss_searched",
            "search_lowered",
        ):
            value = getattr(s, name)
            out[f"task/{s.task}/{name}"] = "n/a" if value is None else value
        out[f"task/{s.task}/steered"] = s.steered
        out[f"task/{s.task}/relative_gain"] = s.relative_gain
    n = max(1, len(m.tasks))
    trm = [s for s in m.tasks if s.trm_loss is not None]
    steered = sum(s.steered for s in m.tasks)
    interval = stats.mean_interval([s.relative_gain for s in m.tasks], m.alpha, m.seed)
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
        tasks_steered=steered,
        tasks_search_lowered=sum(s.search_lowered for s in m.tasks),
        headroom_loss=sum(s.encoder_loss - s.best_loss for s in m.tasks) / n,
        mean_relative_gain=sum(s.relative_gain for s in m.tasks) / n,
        headroom_ci_low=interval.low,
        headroom_ci_high=interval.high,
        ci_level=interval.level,
        p_value=stats.sign_test(steered, len(m.tasks)),
        test="one-sided sign test (clearly better on more than half the tasks)",
        alpha=m.alpha,
        tasks_needed=stats.tasks_needed(m.alpha),
        search_scale=m.search_scale,
        search_scale_source=m.search_scale_source,
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
        f"{m.demo_queries} demonstrations as queries, step {search.STEP_FRACTION:g} x {m.search_scale:.3g} from "
        f"{m.search_scale_source}) {nums['mean_optimised_loss']:.3g} ({nums['optimised_exact']}/{n} exact){trm}"
    )


def _statistics(m: H7Measurement) -> str:
    """The test and the interval, as a paper reports them."""
    nums = task_numbers(m)
    return (
        f"clearly better on {nums['tasks_steered']} of {nums['tasks']} tasks, one-sided sign test p = "
        f"{nums['p_value']:.3g} (alpha {m.alpha:g}); mean relative loss gain {nums['mean_relative_gain']:.3g}, "
        f"{nums['ci_level']:.0%} bootstrap interval [{nums['headroom_ci_low']:.3g}, {nums['headroom_ci_high']:.3g}]"
    )


def _unscorable(m: H7Measurement, hypothesis: str, name: str) -> CheckResult | None:
    """Inconclusive when the measurement makes no claim (untrained weights), scored no task, or
    scored fewer tasks than the sign test needs to reach its level."""
    if m.no_claim:
        return CheckResult.inconclusive(hypothesis, name, m.no_claim, task_numbers(m) if m.tasks else {})
    if not m.tasks:
        return CheckResult.inconclusive(hypothesis, name, "no held-out task to score")
    needed = stats.tasks_needed(m.alpha)
    if len(m.tasks) < needed:
        return CheckResult.inconclusive(
            hypothesis,
            name,
            f"{len(m.tasks)} held-out tasks cannot reach significance: a one-sided sign test at alpha "
            f"{m.alpha:g} needs at least {needed} (pass --h7-tasks {needed}); {_summary(m)}",
            task_numbers(m),
        )
    return None


def _absence_blocked(m: H7Measurement) -> str:
    """Why no absence of headroom may be claimed ("" when one may). A task where the search did
    not lower the demonstrations' loss says nothing (the search may not have moved), so the
    claim rests on the others: at least `tasks_needed` of them, and the interval of their mean
    relative gain below the "clearly better" margin."""
    moved = [s for s in m.tasks if s.search_lowered]
    unmoved = [s.task for s in m.tasks if not s.search_lowered]
    needed = stats.tasks_needed(m.alpha)
    if len(moved) < needed:
        return (
            f"the search did not lower the demonstrations' loss on {len(unmoved)} of {len(m.tasks)} tasks "
            f"({', '.join(unmoved[:4])}), which say nothing, leaving {len(moved)} of the {needed} needed (step "
            f"{search.STEP_FRACTION:g} x {m.search_scale:.3g}, {m.search_scale_source}): more steps (--h7-steps) "
            "or tasks, or a decoder that reads its context"
        )
    high = stats.mean_interval([s.relative_gain for s in moved], m.alpha, m.seed).high
    if not high < MIN_RELATIVE_GAIN:
        return (
            f"the interval's upper end {high:.3g} over the {len(moved)} tasks the search moved on reaches the "
            f'{MIN_RELATIVE_GAIN:.0%} margin of "clearly better", so neither headroom nor its absence is shown: '
            "more tasks (--h7-tasks)"
        )
    return ""


def _encoder_solves(m: H7Measurement) -> bool:
    return 2 * sum(s.encoder_exact for s in m.tasks) > len(m.tasks)


def check_context_headroom(m: H7Measurement) -> CheckResult:
    """H7 evidence when another context (optimised, or the TRM's embedding) is clearly better
    than the encoder's on significantly more than half the held-out tasks (sign test at
    `m.alpha`); "little headroom" only when the search moved and the interval stays below the
    margin; inconclusive otherwise, saying why."""
    name = "context_headroom"
    if unscorable := _unscorable(m, H, name):
        return unscorable
    nums = task_numbers(m)
    if nums["p_value"] <= m.alpha:
        return CheckResult.fail(
            H,
            name,
            f"the decoder can be steered and the encoder is what fails: another context is {_statistics(m)} "
            f"(headroom {nums['headroom_loss']:.3g} loss per task); {_summary(m)}",
            nums,
        )
    if _encoder_solves(m):
        return CheckResult.ok(
            H,
            name,
            f"little headroom: the encoder's context already solves {nums['encoder_exact']} of {len(m.tasks)} "
            f"test queries exactly; another context is {_statistics(m)}; {_summary(m)}",
            nums,
        )
    if blocked := _absence_blocked(m):
        return CheckResult.inconclusive(
            H, name, f"not significant, and {blocked}; {_statistics(m)}; {_summary(m)}", nums
        )
    if not nums["tasks_steered"]:
        return CheckResult.inconclusive(
            H,
            name,
            f"no context tried does clearly better or solves the tasks, so the encoder cannot be judged by "
            f"them (see context_steering); {_statistics(m)}; {_summary(m)}",
            nums,
        )
    return CheckResult.ok(H, name, f"little headroom: another context is {_statistics(m)}; {_summary(m)}", nums)


CANNOT_STEER = "the decoder cannot be steered by a context"


def check_decoder_steerable(m: H7Measurement) -> CheckResult:
    """The design's premise: some context makes this decoder solve or clearly improve the
    held-out tasks. Passes when another context is significantly often clearly better or the
    encoder's context solves them; fails ("cannot be steered") only when the search lowered
    the demonstrations' loss on every task and the interval of the gain stays below the margin."""
    name = "decoder_steerable"
    if unscorable := _unscorable(m, STEERING, name):
        return unscorable
    nums = task_numbers(m)
    if nums["p_value"] <= m.alpha or _encoder_solves(m):
        how = (
            f"another context is {_statistics(m)}"
            if nums["p_value"] <= m.alpha
            else f"the encoder's context solves {nums['encoder_exact']} of {len(m.tasks)}"
        )
        return CheckResult.ok(STEERING, name, f"a context steers the decoder: {how}; {_summary(m)}", nums)
    if blocked := _absence_blocked(m):
        return CheckResult.inconclusive(
            STEERING, name, f"no steering shown, and {blocked}; {_statistics(m)}; {_summary(m)}", nums
        )
    return CheckResult.fail(
        STEERING,
        name,
        f"{CANNOT_STEER}: neither the optimised context nor the TRM's embedding does clearly better than the "
        f"encoder's ({_statistics(m)}, below the {MIN_RELATIVE_GAIN:.0%} margin), and none solves the tasks; "
        f"{_summary(m)}",
        nums,
    )
