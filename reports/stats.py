"""Small statistics over seeds: mean/std/n summaries and a seeded bootstrap for differences.

    from reports.stats import bootstrap_mean_diff
    d = bootstrap_mean_diff([0.55, 0.57, 0.56], [0.50, 0.52, 0.51], seeds_a=[1, 2, 3],
                            seeds_b=[1, 2, 3], n_resamples=10_000, seed=0)
    d.estimate, d.ci_low, d.ci_high, d.paired, d.contains_zero

With three seeds a percentile bootstrap interval is rough (it can only use the 10 distinct
resamples of three values); it is reported because it is honest about how little three runs
say, not because it is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SINGLE_RUN = "single run: no interval"
NO_RUNS = "no finished runs with this metric"


@dataclass(frozen=True)
class Spread:
    """Mean, sample standard deviation (ddof=1; NaN when n < 2) and count of finite values."""

    mean: float
    std: float
    n: int


def describe(values: Sequence[float] | np.ndarray) -> Spread:
    """Summarise the finite values of `values` (NaN and inf are dropped)."""
    arr = _finite(values)
    if arr.size == 0:
        return Spread(math.nan, math.nan, 0)
    std = float(np.std(arr, ddof=1)) if arr.size >= 2 else math.nan
    return Spread(float(np.mean(arr)), std, int(arr.size))


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) with a percentile bootstrap interval.

    Attributes:
        estimate: the observed difference of means (NaN when a side has no value).
        ci_low, ci_high: the interval bounds (NaN when either side has a single run).
        n_a, n_b: finite values used on each side.
        paired: True when a and b were paired by seed.
        note: "" or why there is no interval (`SINGLE_RUN`, `NO_RUNS`).
    """

    estimate: float
    ci_low: float
    ci_high: float
    n_a: int
    n_b: int
    paired: bool
    note: str = ""

    @property
    def has_interval(self) -> bool:
        return math.isfinite(self.ci_low) and math.isfinite(self.ci_high)

    @property
    def contains_zero(self) -> bool | None:
        """Whether the interval contains 0 (None without an interval)."""
        if not self.has_interval:
            return None
        return bool(self.ci_low <= 0.0 <= self.ci_high)


def bootstrap_mean_diff(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    seeds_a: Sequence[Any] | None = None,
    seeds_b: Sequence[Any] | None = None,
    n_resamples: int = 10_000,
    confidence: float = 0.95,
    seed: int = 0,
) -> Difference:
    """Bootstrap interval for mean(a) - mean(b) over seeds.

    Pairs by seed when both sides carry the same set of distinct seeds (each run of `a` is
    matched with the run of `b` that shares its training seed, and seed indices are
    resampled); otherwise resamples each side independently. Non-finite values are dropped
    (with their partner when paired). The same arguments always give the same interval.

    Args:
        a, b: per-run values (e.g. dev_overall of each seed of a variant and of the baseline).
        seeds_a, seeds_b: the training seed of each value, for pairing; None: unpaired.
        n_resamples: bootstrap resamples.
        confidence: interval coverage, e.g. 0.95 for the 2.5th-97.5th percentiles.
        seed: seed of the resampling generator.

    Returns:
        A `Difference`; with fewer than two runs on either side it has no interval and
        `note == SINGLE_RUN`.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    pairs = _pair_by_seed(va, vb, seeds_a, seeds_b)
    rng = np.random.default_rng(seed)
    alpha = (1.0 - confidence) / 2.0
    if pairs is not None:
        diffs = pairs[:, 0] - pairs[:, 1]
        n = diffs.size
        if n == 0:
            return Difference(math.nan, math.nan, math.nan, 0, 0, True, NO_RUNS)
        estimate = float(np.mean(diffs))
        if n < 2:
            return Difference(estimate, math.nan, math.nan, n, n, True, SINGLE_RUN)
        stats = diffs[rng.integers(0, n, size=(n_resamples, n))].mean(axis=1)
        low, high = np.quantile(stats, [alpha, 1.0 - alpha])
        return Difference(estimate, float(low), float(high), n, n, True)

    fa, fb = _finite(va), _finite(vb)
    if fa.size == 0 or fb.size == 0:
        return Difference(math.nan, math.nan, math.nan, int(fa.size), int(fb.size), False, NO_RUNS)
    estimate = float(np.mean(fa) - np.mean(fb))
    if fa.size < 2 or fb.size < 2:
        return Difference(estimate, math.nan, math.nan, fa.size, fb.size, False, SINGLE_RUN)
    mean_a = fa[rng.integers(0, fa.size, size=(n_resamples, fa.size))].mean(axis=1)
    mean_b = fb[rng.integers(0, fb.size, size=(n_resamples, fb.size))].mean(axis=1)
    low, high = np.quantile(mean_a - mean_b, [alpha, 1.0 - alpha])
    return Difference(estimate, float(low), float(high), int(fa.size), int(fb.size), False)


def _pair_by_seed(
    va: np.ndarray, vb: np.ndarray, seeds_a: Sequence[Any] | None, seeds_b: Sequence[Any] | None
) -> np.ndarray | None:
    """(n, 2) array of (a, b) values sharing a seed, or None when the seed sets differ."""
    if seeds_a is None or seeds_b is None:
        return None
    sa, sb = list(seeds_a), list(seeds_b)
    if len(sa) != va.size or len(sb) != vb.size:
        raise ValueError("seeds_a/seeds_b must have one seed per value")
    if len(set(sa)) != len(sa) or len(set(sb)) != len(sb) or set(sa) != set(sb):
        return None
    index_b = {s: i for i, s in enumerate(sb)}
    pairs = np.array([(va[i], vb[index_b[s]]) for i, s in enumerate(sa)], dtype=float)
    pairs = pairs.reshape(-1, 2)
    return pairs[np.isfinite(pairs).all(axis=1)]


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray(values, dtype=float).ravel()
    return arr[np.isfinite(arr)]
