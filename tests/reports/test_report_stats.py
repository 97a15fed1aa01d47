"""Seeded bootstrap intervals: deterministic, paired by seed, honest about single runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from reports.stats import NO_RUNS, SINGLE_RUN, bootstrap_mean_diff, describe


def test_describe_uses_sample_std() -> None:
    s = describe([0.50, 0.52, 0.54, float("nan")])
    assert s.n == 3
    assert s.mean == pytest.approx(0.52)
    assert s.std == pytest.approx(0.02)  # ddof=1; the population std would be 0.0163
    one = describe([0.7])
    assert one.n == 1 and one.mean == 0.7 and math.isnan(one.std)
    assert describe([]).n == 0


def test_same_seed_same_interval_other_seed_other_resamples() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.6, 0.02, 5), rng.normal(0.55, 0.02, 5)
    d1 = bootstrap_mean_diff(a, b, n_resamples=2000, seed=7)
    d2 = bootstrap_mean_diff(a, b, n_resamples=2000, seed=7)
    d3 = bootstrap_mean_diff(a, b, n_resamples=2000, seed=8)
    assert d1 == d2
    assert (d1.ci_low, d1.ci_high) != (d3.ci_low, d3.ci_high)
    assert d1.estimate == pytest.approx(a.mean() - b.mean())


def test_paired_interval_contains_the_true_difference() -> None:
    # Seed effects much larger than the treatment effect: pairing removes them.
    rng = np.random.default_rng(0)
    seeds = [11, 12, 13, 14, 15, 16]
    seed_effect = rng.normal(0.0, 0.05, len(seeds))
    base = 0.5 + seed_effect
    variant = base + 0.03 + rng.normal(0.0, 0.002, len(seeds))
    # the variant's runs listed in another order: pairing must follow the seeds
    order = [3, 0, 5, 1, 4, 2]
    d = bootstrap_mean_diff(variant[order], base, seeds_a=[seeds[i] for i in order],
                            seeds_b=seeds, n_resamples=10_000, seed=0)  # fmt: skip
    assert d.paired and d.n_a == d.n_b == 6
    assert d.ci_low <= 0.03 <= d.ci_high
    assert d.contains_zero is False
    assert d.ci_high - d.ci_low < 0.01
    unpaired = bootstrap_mean_diff(variant, base, n_resamples=10_000, seed=0)
    assert not unpaired.paired
    assert unpaired.ci_high - unpaired.ci_low > d.ci_high - d.ci_low


def test_unpaired_interval_contains_the_true_difference() -> None:
    rng = np.random.default_rng(3)
    a, b = 0.62 + rng.normal(0, 0.01, 12), 0.55 + rng.normal(0, 0.01, 10)
    d = bootstrap_mean_diff(a, b, seeds_a=list(range(12)), seeds_b=list(range(10)),
                            n_resamples=10_000, seed=0)  # fmt: skip
    assert not d.paired  # different seed sets
    assert d.ci_low <= 0.07 <= d.ci_high and d.contains_zero is False


def test_no_difference_contains_zero() -> None:
    d = bootstrap_mean_diff([0.53, 0.51, 0.54], [0.50, 0.52, 0.54], seeds_a=[1, 2, 3],
                            seeds_b=[1, 2, 3], seed=0)  # fmt: skip
    assert d.paired and d.contains_zero is True
    assert d.estimate == pytest.approx(0.02 / 3)


def test_single_run_has_no_interval() -> None:
    d = bootstrap_mean_diff([0.56], [0.50, 0.52, 0.54])
    assert d.note == SINGLE_RUN and d.contains_zero is None and not d.has_interval
    assert d.estimate == pytest.approx(0.04)
    assert bootstrap_mean_diff([], [0.5, 0.6]).note == NO_RUNS


def test_nan_values_are_dropped_with_their_partner() -> None:
    d = bootstrap_mean_diff([0.6, float("nan"), 0.7], [0.5, 0.5, 0.6], seeds_a=[1, 2, 3],
                            seeds_b=[1, 2, 3], n_resamples=100)  # fmt: skip
    assert d.paired and d.n_a == 2
    assert d.estimate == pytest.approx(0.1)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_mean_diff([1, 2], [1, 2], confidence=95)
    with pytest.raises(ValueError, match="one seed per value"):
        bootstrap_mean_diff([1, 2], [1, 2], seeds_a=[1], seeds_b=[1, 2])
