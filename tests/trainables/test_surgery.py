"""Gradient surgery: PCGrad against a separately written reference, plus one contract for all."""

from __future__ import annotations

import doctest
import itertools
import math
import random

import pytest
import torch

import trainables.minbert.extensions.surgery as surgery_module
from trainables.minbert.config import load_trial_config
from trainables.minbert.extensions.pcgrad import PCGrad
from trainables.minbert.extensions.surgery import GradientSurgery, SumGradients, make_surgery

SHAPES = [(3, 2), (4,), (1,)]  # three shared "parameters", 11 numbers in all


def _task_grads(tasks: list[str], seed: int, scale: float = 0.1) -> dict[str, list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return {t: [scale * torch.randn(s, generator=gen) for s in SHAPES] for t in tasks}


def _flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads]).double()


def _reference_pcgrad(vectors: list[torch.Tensor], orders: list[list[int]]) -> torch.Tensor:
    """Yu et al. Algorithm 1, written plainly in float64; orders[i] lists the j visited for i."""
    total = torch.zeros_like(vectors[0])
    for i, g in enumerate(vectors):
        g_proj = g.clone()
        for j in orders[i]:
            g_j = vectors[j]
            if float(g_j @ g_j) == 0.0:
                continue
            dot = float(g_proj @ g_j)
            if dot < 0:
                g_proj = g_proj - dot / float(g_j @ g_j) * g_j
        total += g_proj
    return total


def _all_orders(n: int) -> list[list[list[int]]]:
    per_task = [list(itertools.permutations([j for j in range(n) if j != i])) for i in range(n)]
    return [[list(o) for o in combo] for combo in itertools.product(*per_task)]


@pytest.mark.parametrize("num_tasks", [3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_pcgrad_matches_reference_for_one_of_the_visiting_orders(
    num_tasks: int, seed: int
) -> None:
    tasks = [f"t{k}" for k in range(num_tasks)]
    grads = _task_grads(tasks, seed)
    got = _flat(PCGrad(seed=seed).combine(grads))
    vectors = [_flat(grads[t]) for t in sorted(tasks)]
    distances = [
        float((got - _reference_pcgrad(vectors, orders)).abs().max())
        for orders in _all_orders(num_tasks)
    ]
    assert min(distances) < 1e-6
    # The random gradients must actually conflict, or this test would only check the sum.
    assert not torch.allclose(got, sum(vectors), atol=1e-4)


def test_pcgrad_two_conflicting_tasks_end_orthogonal() -> None:
    for seed in range(10):
        grads = _task_grads(["a", "b"], seed)
        flat = torch.stack([_flat(grads["a"]), _flat(grads["b"])]).float()
        if float(flat[0] @ flat[1]) >= 0:
            flat[1] = -flat[1]  # make the pair conflict
        projected = PCGrad(seed=seed).project(flat)
        assert abs(float(projected[0] @ flat[1])) < 1e-6
        assert abs(float(projected[1] @ flat[0])) < 1e-6
        # Exactly the paper's formula for two tasks (no order dependence).
        g1, g2 = flat[0].double(), flat[1].double()
        expected = g1 - (g1 @ g2) / (g2 @ g2) * g2
        assert torch.allclose(projected[0].double(), expected, atol=1e-6)


def test_pcgrad_leaves_non_conflicting_gradients_untouched() -> None:
    grads = {t: [g.abs() for g in gs] for t, gs in _task_grads(["a", "b", "c"], 7).items()}
    got = PCGrad(seed=0).combine(grads)
    for k, g in enumerate(got):
        assert torch.allclose(g, sum(grads[t][k] for t in grads), atol=1e-6)


def test_pcgrad_on_orthogonal_gradients_equals_plain_sum() -> None:
    q, _ = torch.linalg.qr(torch.randn(11, 11, generator=torch.Generator().manual_seed(3)))
    grads = {}
    for k, task in enumerate(["a", "b", "c"]):
        column, offset, parts = q[:, k], 0, []
        for shape in SHAPES:
            n = math.prod(shape)
            parts.append(column[offset : offset + n].reshape(shape))
            offset += n
        grads[task] = parts
    got = PCGrad(seed=0).combine(grads)
    plain = SumGradients().combine(grads)
    for a, b in zip(got, plain, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_stats_conflict_rate_and_cosines_by_hand() -> None:
    # a=(1,0), b=(-1,1), c=(0,1): a.b=-1 (conflict), a.c=0, b.c=1 -> 2 of 6 ordered pairs.
    grads = {
        "c": [torch.tensor([0.0, 1.0])],
        "a": [torch.tensor([1.0, 0.0])],
        "b": [torch.tensor([-1.0, 1.0])],
    }
    for surgery in (PCGrad(seed=0), SumGradients()):
        surgery.combine(grads)
        stats = surgery.last_stats
        assert stats["conflict_rate"] == pytest.approx(1 / 3)
        assert stats["cos/a-b"] == pytest.approx(-1 / math.sqrt(2))
        assert stats["cos/a-c"] == pytest.approx(0.0)
        assert stats["cos/b-c"] == pytest.approx(1 / math.sqrt(2))
        assert set(stats) == {"conflict_rate", "cos/a-b", "cos/a-c", "cos/b-c"}


def test_stats_use_the_original_gradients_not_the_projected_ones() -> None:
    grads = {"a": [torch.tensor([1.0, 0.0])], "b": [torch.tensor([-1.0, 1.0])]}
    surgery = PCGrad(seed=0)
    assert [g.tolist() for g in surgery.combine(grads)] == [[0.5, 1.5]]
    assert surgery.last_stats == pytest.approx(
        {"conflict_rate": 1.0, "cos/a-b": -1 / math.sqrt(2)}
    )


def test_zero_gradients_and_missing_entries() -> None:
    grads = _task_grads(["a", "b"], 5)
    with_zero = dict(grads, z=[torch.zeros(s) for s in SHAPES])
    assert all(
        torch.allclose(x, y, atol=1e-7)
        for x, y in zip(
            PCGrad(seed=1).combine(with_zero), PCGrad(seed=1).combine(grads), strict=True
        )
    )
    # A None entry (a parameter one task does not reach) counts as zeros.
    partial = {"a": [None, grads["a"][1], None], "b": grads["b"]}
    explicit = {
        "a": [torch.zeros(SHAPES[0]), grads["a"][1], torch.zeros(SHAPES[2])],
        "b": grads["b"],
    }
    for x, y in zip(
        PCGrad(seed=0).combine(partial), PCGrad(seed=0).combine(explicit), strict=True
    ):
        assert torch.equal(x, y)
    surgery = PCGrad(seed=0)
    surgery.combine(with_zero)
    assert surgery.last_stats["cos/a-z"] == 0.0


def _surgery_of(pcgrad: bool, seed: int) -> GradientSurgery:
    cfg = load_trial_config(
        None, [f"extensions.pcgrad={str(pcgrad).lower()}", f"train.seed={seed}"]
    )
    return make_surgery(cfg)


def test_make_surgery() -> None:
    assert isinstance(_surgery_of(pcgrad=False, seed=1), SumGradients)
    assert isinstance(_surgery_of(pcgrad=True, seed=1), PCGrad)
    assert _surgery_of(pcgrad=True, seed=1).needs_task_gradients
    assert not _surgery_of(pcgrad=False, seed=1).needs_task_gradients
    # the trial's train.seed seeds PCGrad's visiting orders
    assert _surgery_of(pcgrad=True, seed=1).state_dict() == PCGrad(seed=1).state_dict()


def test_pcgrad_visiting_order_is_random_and_seeded() -> None:
    # With three tasks the result depends on the order; different seeds must try both orders.
    grads = {
        "a": [torch.tensor([1.0, 0.0, 0.0])],
        "b": [torch.tensor([-0.8, 1.0, 0.3])],
        "c": [torch.tensor([-0.5, -1.0, 0.4])],
    }
    results = {tuple(PCGrad(seed=s).combine(grads)[0].tolist()) for s in range(20)}
    assert len(results) > 1


def test_docstring_examples_run() -> None:
    assert doctest.testmod(surgery_module, raise_on_error=True).attempted > 0


@pytest.fixture(params=["sum", "pcgrad"])
def make(request: pytest.FixtureRequest):
    return {"sum": lambda seed: SumGradients(), "pcgrad": lambda seed: PCGrad(seed=seed)}[
        request.param
    ]


class TestGradientSurgeryContract:
    """Every GradientSurgery implementation must pass these."""

    def test_is_a_gradient_surgery(self, make) -> None:
        assert isinstance(make(0), GradientSurgery)

    def test_shapes_and_dtypes_preserved(self, make) -> None:
        for dtype in (torch.float32, torch.bfloat16):
            grads = {
                t: [g.to(dtype) for g in gs] for t, gs in _task_grads(["a", "b", "c"], 1).items()
            }
            out = make(0).combine(grads)
            assert [tuple(g.shape) for g in out] == SHAPES
            assert all(g.dtype == dtype for g in out)

    def test_deterministic_given_seed(self, make) -> None:
        first, second = make(123), make(123)
        for step in range(4):
            grads = _task_grads(["sst", "para", "sts"], step)
            for x, y in zip(first.combine(grads), second.combine(grads), strict=True):
                assert torch.equal(x, y)

    def test_independent_of_dict_order(self, make) -> None:
        grads = _task_grads(["sst", "para", "sts"], 9)
        reversed_grads = dict(reversed(list(grads.items())))
        for x, y in zip(make(4).combine(grads), make(4).combine(reversed_grads), strict=True):
            assert torch.equal(x, y)

    def test_single_task_passes_through(self, make) -> None:
        grads = _task_grads(["sst"], 2)
        surgery = make(0)
        for x, y in zip(surgery.combine(grads), grads["sst"], strict=True):
            assert torch.allclose(x, y)
        assert surgery.last_stats == {"conflict_rate": 0.0}

    def test_orthogonal_gradients_give_the_plain_sum(self, make) -> None:
        grads = {
            "a": [torch.tensor([[1.0, 0.0], [0.0, 0.0]])],
            "b": [torch.tensor([[0.0, 2.0], [0.0, 0.0]])],
            "c": [torch.tensor([[0.0, 0.0], [-3.0, 0.0]])],
        }
        (out,) = make(0).combine(grads)
        assert torch.equal(out, torch.tensor([[1.0, 2.0], [-3.0, 0.0]]))

    def test_inputs_are_not_modified(self, make) -> None:
        grads = _task_grads(["a", "b", "c"], 11)
        before = {t: [g.clone() for g in gs] for t, gs in grads.items()}
        make(0).combine(grads)
        for t in grads:
            assert all(torch.equal(x, y) for x, y in zip(grads[t], before[t], strict=True))

    def test_state_dict_resumes_the_same_sequence(self, make) -> None:
        surgery = make(5)
        surgery.combine(_task_grads(["a", "b", "c"], 0))
        state = surgery.state_dict()
        expected = surgery.combine(_task_grads(["a", "b", "c"], 1))
        resumed = make(999)
        resumed.load_state_dict(state)
        got = resumed.combine(_task_grads(["a", "b", "c"], 1))
        assert all(torch.equal(x, y) for x, y in zip(got, expected, strict=True))

    def test_rejects_empty_and_ragged_input(self, make) -> None:
        with pytest.raises(ValueError, match="at least one task"):
            make(0).combine({})
        with pytest.raises(ValueError, match="one gradient per shared parameter"):
            make(0).combine({"a": [torch.zeros(2)], "b": [torch.zeros(2), torch.zeros(1)]})


def test_sum_refuses_a_pcgrad_checkpoint() -> None:
    state = PCGrad(seed=0).state_dict()
    with pytest.raises(ValueError, match="extensions.pcgrad"):
        SumGradients().load_state_dict(state)


def test_pcgrad_state_survives_list_roundtrip() -> None:
    # Checkpoints written as JSON/YAML turn tuples into lists.
    surgery = PCGrad(seed=3)
    version, internal, gauss = surgery.state_dict()["rng"]
    restored = PCGrad(seed=0)
    restored.load_state_dict({"rng": [version, list(internal), gauss]})
    assert restored._rng.random() == random.Random(3).random()
