"""How many random start-up trials TPE needs when N trials run at once: a simulation.

    .venv/bin/python benchmarks/bench_tpe_startup.py                     # 30 seeds, N = 1, 2, 4, 8
    .venv/bin/python benchmarks/bench_tpe_startup.py --seeds 50 --budget 48

Plain Optuna (the TPESampler hpsearch uses: seeded, constant_liar=True), no Ray and no
training: N workers ask for a trial as soon as they are free and tell its score when it ends,
in the order the (random) trial durations make them end, as Ray Tune does under
`--max-concurrent N`. The objective looks like the spaces shipped in search_spaces/: a log
learning rate with a peak, a dropout with a weak effect, two toggles with small effects, plus
evaluation noise. Each start-up rule is run over the same seeds; the figure is the regret (the
best score possible minus the best found) after a third, two thirds and all of the budget,
median and quartiles over seeds (lower is better).

The rules compared (B is the serial rule, min(10, max(2, budget // 3))). Optuna counts only
ended trials towards `n_startup_trials`, so with N at once, N - 1 more trials are random:
    serial       B ended trials first, whatever N (B + N - 1 random trials)
    minus_n      max(2, B - (N - 1)) ended trials first (about B random trials in all):
                 hpsearch's rule, hpsearch.space_search.tpe_startup_trials
    plus_n       B + N - 1
    max_2n       max(B, 2N)
"""

from __future__ import annotations

import argparse
import heapq
import math
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hpsearch.space_search import serial_startup_trials, tpe_startup_trials  # noqa: E402

RULES: dict[str, Callable[[int, int], int]] = {
    "serial": lambda budget, n: serial_startup_trials(budget),
    "minus_n": tpe_startup_trials,  # hpsearch's rule: max(2, B - (N - 1))
    "plus_n": lambda budget, n: serial_startup_trials(budget) + n - 1,
    "max_2n": lambda budget, n: max(serial_startup_trials(budget), 2 * n),
}
BEST = 0.62  # the objective's maximum (noise-free)


def objective(params: dict[str, object]) -> float:
    """The noise-free score of a configuration."""
    log_lr = math.log10(float(params["lr"]))  # type: ignore[arg-type]
    score = BEST - 0.08 * (log_lr + 4.3) ** 2  # peak at lr = 5e-5
    score -= 0.05 * abs(float(params["dropout"]) - 0.1)  # type: ignore[arg-type]
    score -= 0.0 if params["cosine"] else 0.02
    score -= 0.01 if params["pcgrad"] else 0.0
    return score


def suggest(trial: optuna.Trial) -> dict[str, object]:
    return {
        "lr": trial.suggest_float("lr", 1e-6, 1e-3, log=True),
        "dropout": trial.suggest_float("dropout", 0.0, 0.3),
        "cosine": trial.suggest_categorical("cosine", [False, True]),
        "pcgrad": trial.suggest_categorical("pcgrad", [False, True]),
    }


def run(budget: int, concurrency: int, startup: int, seed: int) -> list[float]:
    """The noise-free best so far after each trial ends, in the order trials end."""
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    rng = np.random.default_rng(seed + 10_000)
    running: list[tuple[float, int, optuna.Trial, float]] = []  # (end time, n, trial, score)
    asked, now, best, curve = 0, 0.0, -math.inf, []
    while asked < budget or running:
        while asked < budget and len(running) < concurrency:
            trial = study.ask()
            params = suggest(trial)
            exact = objective(params)
            noisy = exact + float(rng.normal(0, 0.003))  # what the trial reports
            duration = float(rng.uniform(0.5, 1.5))
            heapq.heappush(running, (now + duration, trial.number, trial, noisy))
            trial.set_user_attr("exact", exact)
            asked += 1
        now, _, trial, noisy = heapq.heappop(running)
        study.tell(trial, noisy)
        best = max(best, study.trials[trial.number].user_attrs["exact"])
        curve.append(BEST - best)
    return curve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=48)
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8])
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    marks = [args.budget // 3, 2 * args.budget // 3, args.budget]
    print(f"budget {args.budget} trials, {args.seeds} seeds; regret after {marks} trials")
    print("N  rule     startup  " + "  ".join(f"regret@{m:<2d} (q25-q75)   " for m in marks))
    for n in args.concurrency:
        for name, rule in RULES.items():
            startup = rule(args.budget, n)
            curves = [run(args.budget, n, startup, seed) for seed in range(args.seeds)]
            cells = []
            for m in marks:
                at = [c[m - 1] for c in curves]
                q25, med, q75 = np.quantile(at, [0.25, 0.5, 0.75])
                cells.append(f"{med:.4f} ({q25:.4f}-{q75:.4f})")
            print(f"{n:<2d} {name:<8s} {startup:>7d}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
