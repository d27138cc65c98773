"""The tests H7's verdicts rest on, from scipy.stats (what a reviewer trusts), at level ALPHA.

- Headroom: a one-sided sign test across held-out tasks. A task is a success when another
  context is clearly better than the encoder's there; the null is "clearly better on at most
  half the tasks", so evidence is significantly more than half. n tasks reach the level only
  from `tasks_needed(alpha)` on (5 at 0.05: 0.5**5 = 0.031).
- An absence ("little headroom", "cannot be steered") is no rejection: it is claimed only when
  the upper end of a seeded percentile-bootstrap interval of the mean per-task relative loss
  gain lies below the "clearly better" margin.
- Generalisation gap: held-out tasks' losses against training tasks' (different tasks, so not
  paired): a one-sided Mann-Whitney U test.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05  # the documented level; --etrm-h7-alpha sets it
BOOTSTRAP_RESAMPLES = 2000


def tasks_needed(alpha: float) -> int:
    """The fewest tasks with which a one-sided sign test can reach `alpha` at all."""
    return max(1, math.ceil(-math.log2(alpha) - 1e-12))


def sign_test(successes: int, n: int) -> float:
    """One-sided p-value of `successes` of `n` against a success rate of at most 1/2."""
    from scipy.stats import binomtest

    return float(binomtest(successes, n, 0.5, alternative="greater").pvalue) if n else math.nan


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    level: float  # e.g. 0.95


def mean_interval(values: Sequence[float], alpha: float, seed: int) -> Interval:
    """A two-sided (1 - alpha) percentile-bootstrap interval of the mean, seeded. Identical
    values give that value at both ends; fewer than two give NaN."""
    data = np.asarray([v for v in values if math.isfinite(v)], dtype=float)
    level = 1 - alpha
    if len(data) < 2:
        return Interval(math.nan, math.nan, level)
    if np.ptp(data) == 0:
        return Interval(float(data[0]), float(data[0]), level)
    from scipy.stats import bootstrap

    with warnings.catch_warnings():  # a near-degenerate resample warns; the percentile interval stands
        warnings.simplefilter("ignore")
        result = bootstrap(
            (data,),
            np.mean,
            confidence_level=level,
            n_resamples=BOOTSTRAP_RESAMPLES,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
    return Interval(float(result.confidence_interval.low), float(result.confidence_interval.high), level)


def greater_test(larger: Sequence[float], smaller: Sequence[float]) -> float:
    """One-sided Mann-Whitney U p-value that `larger` tends to exceed `smaller`."""
    from scipy.stats import mannwhitneyu

    if not larger or not smaller:
        return math.nan
    return float(mannwhitneyu(larger, smaller, alternative="greater").pvalue)
