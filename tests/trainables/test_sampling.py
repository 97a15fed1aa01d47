"""Task samplers: epoch plans and determinism under a seed (shorter data sets restarting is
tested with the batch streams, in test_streams.py)."""

from __future__ import annotations

import doctest
import random
from collections import Counter

import pytest

import trainables.minbert.extensions.sampling as sampling_module
from trainables.errors import ConfigError
from trainables.minbert.extensions.sampling import (
    CycleSampler,
    ProportionalSampler,
    TaskSampler,
    make_sampler,
)

SIZES = {"sst": 5, "para": 12, "sts": 3}


def test_cycle_every_step_takes_every_task_and_epoch_is_the_largest_set() -> None:
    plan = CycleSampler().epoch(SIZES, random.Random(0))
    assert len(plan) == max(SIZES.values()) == 12
    assert all(step == ("para", "sst", "sts") for step in plan)


def test_proportional_one_pass_over_every_set_one_task_per_step() -> None:
    plan = ProportionalSampler().epoch(SIZES, random.Random(0))
    assert len(plan) == sum(SIZES.values()) == 20
    assert all(len(step) == 1 for step in plan)
    assert Counter(step[0] for step in plan) == SIZES
    # Shuffled, not blocked by task.
    assert plan != sorted(plan)


def test_proportional_is_deterministic_under_a_seed() -> None:
    sampler = make_sampler("proportional")
    assert sampler.epoch(SIZES, random.Random(7)) == sampler.epoch(SIZES, random.Random(7))
    assert sampler.epoch(SIZES, random.Random(7)) != sampler.epoch(SIZES, random.Random(8))
    reordered = dict(reversed(list(SIZES.items())))
    assert sampler.epoch(reordered, random.Random(7)) == sampler.epoch(SIZES, random.Random(7))


def test_proportional_draws_in_proportion_to_size_over_the_epoch() -> None:
    sizes = {"big": 300, "small": 100}
    plan = ProportionalSampler().epoch(sizes, random.Random(1))
    first_half = Counter(step[0] for step in plan[:200])
    # Expected 150 / 50; a blocked or biased order would be far off.
    assert 120 < first_half["big"] < 180


@pytest.mark.parametrize("sampler", [CycleSampler(), ProportionalSampler()])
def test_empty_tasks_are_left_out_and_negative_counts_refused(sampler: TaskSampler) -> None:
    plan = sampler.epoch({"sst": 2, "sts": 0}, random.Random(0))
    assert {t for step in plan for t in step} == {"sst"}
    assert sampler.epoch({"sst": 0}, random.Random(0)) == []
    with pytest.raises(ValueError, match="negative"):
        sampler.epoch({"sst": -1}, random.Random(0))


def test_make_sampler_names_and_unknown_name() -> None:
    assert isinstance(make_sampler("cycle"), CycleSampler)
    assert isinstance(make_sampler("proportional"), ProportionalSampler)
    with pytest.raises(ConfigError) as err:
        make_sampler("round_robin")
    message = str(err.value)
    assert "extensions.task_sampling" in message and "cycle, proportional" in message
    assert "\n" not in message


def test_docstring_examples_run() -> None:
    assert doctest.testmod(sampling_module, raise_on_error=True).attempted > 0
