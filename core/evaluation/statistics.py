"""Spread and significance of metric values: confidence intervals and a test between two variants.

A run's value comes with half-sample replicates (:mod:`raresynth.evaluation.measure`);
a variant has one run per seed. Two sources of randomness therefore stand behind a
difference between variants: which synthetic images were drawn (within a run) and how
training went (across seeds). Both are resampled here:

* :func:`cell_interval` - the 95% interval of a variant's mean: Student's t over seeds
  when there are two or more; with one seed, the run's half-sample spread
  (value +- 1.96 sd), which covers the synthetic sample only.
* :func:`compare` - a two-sided test of "variant A and variant B score the same" by a
  hierarchical bootstrap (Davison & Hinkley, *Bootstrap Methods and their Application*,
  1997, sec. 3.8, resampling the top stage, then within it): each draw resamples the
  seeds of each variant with replacement, then adds one centred half-sample deviation
  per drawn run; the p-value is twice the smaller share of draws whose difference of
  scores falls on either side of zero (Efron & Tibshirani, *An Introduction to the
  Bootstrap*, 1993, sec. 16.4: the percentile interval's test). With one seed per
  variant the test covers only the synthetic sample, not training randomness; the
  report says so.

A score is oriented so that higher is better: the value (``ideal: higher``), its
negative (``lower``), or minus its distance from the ``real (held-out)`` reference
(``real``).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import stats as scipy_stats

#: The significance level the report uses.
ALPHA = 0.05
#: How :func:`compare` tests, in the report's words.
TEST_METHOD = ("two-sided hierarchical bootstrap (resampling seeds, then half-samples of each run's synthetic set), "
               "best variant against each other")


@dataclass
class RunValue:
    """One run's value and its half-sample replicates (may be empty)."""

    value: float
    replicates: list[float] = field(default_factory=list)

    def deviations(self) -> np.ndarray:
        """Replicates centred on their mean: the sampling noise around ``value``."""
        finite = [x for x in self.replicates if math.isfinite(x)]
        if len(finite) < 2:
            return np.zeros(0)
        array = np.asarray(finite, dtype=np.float64)
        return array - array.mean()


def score(value: float | np.ndarray, ideal: str, real: float | None = None) -> float | np.ndarray:
    """``value`` oriented so that higher is better (see the module docstring)."""
    if ideal == "higher":
        return value
    if ideal == "lower":
        return -value
    if ideal == "real":
        if real is None:
            raise ValueError("a value whose ideal is the real images' value needs the real (held-out) reference")
        return -abs(value - real)
    raise ValueError(f"ideal {ideal!r} is not ranked")


def cell_interval(runs: Sequence[RunValue], level: float = 0.95) -> tuple[float, float] | None:
    """The ``level`` interval of the mean over ``runs`` (see the module docstring); ``None`` when there is nothing to go on."""
    values = [r.value for r in runs if math.isfinite(r.value)]
    if len(values) != len(runs) or not values:
        return None
    mean = statistics.fmean(values)
    if len(values) >= 2:
        half = scipy_stats.t.ppf(0.5 + level / 2, len(values) - 1) * statistics.stdev(values) / math.sqrt(len(values))
        return mean - half, mean + half
    deviations = runs[0].deviations()
    if len(deviations) < 2:
        return None
    half = scipy_stats.norm.ppf(0.5 + level / 2) * float(np.std(deviations, ddof=1))
    return mean - half, mean + half


@dataclass
class Comparison:
    """The result of :func:`compare`: the observed difference of scores and its p-value."""

    difference: float  # score(A) - score(B): positive when A is better
    p_value: float | None  # None: not testable (one run each and no replicates)
    draws: int
    method: str

    @property
    def significant(self) -> bool:
        return self.p_value is not None and self.p_value < ALPHA


def _resampled_means(runs: Sequence[RunValue], draws: int, rng: np.random.Generator) -> np.ndarray:
    values = np.asarray([r.value for r in runs], dtype=np.float64)
    picks = rng.integers(0, len(runs), size=(draws, len(runs))) if len(runs) > 1 else np.zeros((draws, 1), dtype=np.int64)
    total = values[picks]
    for i, run in enumerate(runs):
        deviations = run.deviations()
        if len(deviations):
            noise = deviations[rng.integers(0, len(deviations), size=(draws, len(runs)))]
            total = total + np.where(picks == i, noise, 0.0)
    return total.mean(axis=1)


def testable(a: Sequence[RunValue], b: Sequence[RunValue]) -> bool:
    """Whether :func:`compare` has any spread to go on."""
    return (len(a) > 1 or len(b) > 1) or any(len(r.deviations()) for r in (*a, *b))


def compare(a: Sequence[RunValue], b: Sequence[RunValue], ideal: str, real: float | None = None, draws: int = 4000,
            seed: int = 0) -> Comparison:
    """Two-sided hierarchical-bootstrap test of equal scores for variants ``a`` and ``b`` (runs = seeds)."""
    if not a or not b:
        raise ValueError("compare needs at least one run on each side")
    observed = float(np.mean(score(np.asarray([r.value for r in a]), ideal, real)) - np.mean(score(np.asarray([r.value for r in b]), ideal, real)))
    method = f"{TEST_METHOD}, {draws} draws"
    values = [r.value for r in (*a, *b)]
    if not all(math.isfinite(x) for x in values):
        return Comparison(observed, None, draws, method)
    if not testable(a, b):
        return Comparison(observed, None, 0, method)
    rng = np.random.default_rng(seed)
    differences = score(_resampled_means(a, draws, rng), ideal, real) - score(_resampled_means(b, draws, rng), ideal, real)
    below, above = float(np.mean(differences <= 0)), float(np.mean(differences >= 0))
    p_value = min(1.0, 2 * min(below, above))
    return Comparison(observed, max(p_value, 1 / draws), draws, method)
