"""The search-efficiency replay on a made-up table: hpsearch's own searcher and scheduler on a
simulated clock explore the grid as each strategy should, and the compute is counted right.

    .venv/bin/python -m pytest tests/benchmarks/test_bench_search.py -q
"""

from __future__ import annotations

import csv
import importlib.util
import itertools
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_search.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_search", BENCH)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_search"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def table(tmp_path_factory, bench):
    """32 configurations x 4 evaluations: the best is lr 1.5e-4, dropout 0.1, cosine, no
    pcgrad (final 0.70); pcgrad trials take 1.5x the seconds."""
    rows = []
    grid = itertools.product([3e-5, 7e-5, 1.5e-4, 3e-4], [0.1, 0.3], [False, True], [False, True])
    for index, (lr, dropout, cosine, pcgrad) in enumerate(grid):
        final = (
            0.60 + 0.05 * (lr == 1.5e-4) + 0.03 * cosine - 0.01 * pcgrad + 0.02 * (dropout == 0.1)
        )
        for k in range(1, 5):
            rows.append(
                {
                    "config_id": f"c{index}",
                    "train.lr": lr,
                    "model.dropout": dropout,
                    "extensions.cosine_sts": cosine,
                    "extensions.pcgrad": pcgrad,
                    "eval_index": k,
                    "evals": 4,
                    "step": 25 * k,
                    "dev_overall": round(final - 0.03 * (4 - k), 6),
                    "seconds": (10 + 40 * k) * (1.5 if pcgrad else 1.0),
                }
            )
    path = tmp_path_factory.mktemp("table") / "table.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return bench.read_table(path)


def _run(bench, table, tmp_path, strategy, concurrency, seed=0):
    space = bench._space_for(bench.DEFAULT_SPACE, strategy, seed, tmp_path)
    return bench.simulate_one(space, table, concurrency, tolerance=0.005)


def test_the_table_reads_back(table):
    assert len(table) == 32
    best = max(table.values(), key=lambda c: c.final)
    assert best.final == pytest.approx(0.70) and len(best.values) == 4


def test_the_grid_runs_each_point_once_and_finds_the_best(bench, table, tmp_path):
    outcome = _run(bench, table, tmp_path, "grid", concurrency=2)
    assert outcome["stopped_early"] == 0
    assert 0 < outcome["hit_fraction"] <= 1.0
    # it stops once it found the best and spent half the grid, or at the whole grid
    assert outcome["spent_fraction"] == pytest.approx(max(0.5, outcome["hit_fraction"]), abs=0.06)
    assert outcome["trials"] <= 32


def test_asha_stops_trials_and_saves_compute(bench, table, tmp_path):
    outcome = _run(bench, table, tmp_path, "random_asha", concurrency=2)
    assert outcome["stopped_early"] > 0
    plain = _run(bench, table, tmp_path, "random", concurrency=2)
    assert plain["stopped_early"] == 0


def test_tpe_learns_on_an_easy_table(bench, table, tmp_path):
    """On a table this regular, TPE + ASHA reaches the best well within the grid's compute for
    most seeds."""
    hits = [_run(bench, table, tmp_path, "tpe_asha", 2, seed)["hit_fraction"] for seed in range(3)]
    reached = [h for h in hits if h is not None]
    assert len(reached) >= 2 and min(reached) < 0.5, hits


def test_quartiles_keep_a_miss_infinite(bench):
    assert bench.quartiles([0.1, 0.2, float("inf"), float("inf")]) == pytest.approx(
        (0.15, float("inf"), float("inf"))
    )
    assert bench.quartiles([0.4]) == (0.4, 0.4, 0.4)
