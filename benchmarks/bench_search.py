"""Search efficiency on the real data: how much compute each search strategy needs.

Two steps (docs/BENCHMARKS.md, "Search efficiency", has the figures):

1. Build a table once. `benchmarks/spaces/search_table.yaml` is a finite grid (learning rate x
   dropout x cosine_sts x pcgrad) on a seeded subset of the real CS224N files, every point run
   to completion through `hpsearch sweep` with the same dev evaluations. `table` turns that
   experiment into a small CSV: one row per (configuration, evaluation) with the evaluation's
   dev_overall and the trial's seconds up to it.

       hpsearch sweep benchmarks/spaces/search_table.yaml --data-dir ../shared/data/cs224n \\
           --cpus-per-trial 1 --storage-path results
       python benchmarks/bench_search.py table results/search_table

2. Replay searches against the table. `replay` runs real Ray Tune with hpsearch's own searcher
   and scheduler (`hpsearch.searcher.search_algorithm` / `asha_scheduler`, as `hpsearch sweep`
   builds them from a space) over the same space, with a trainable that looks its sampled
   configuration up in the table and reports that configuration's recorded curve instead of
   training (sleeping the recorded seconds times --time-scale, so that trials finish in the
   order their durations imply). Strategies: TPE + ASHA, TPE, random + ASHA, random, and the
   grid, each over --seeds sampler seeds at each --concurrency.

       python benchmarks/bench_search.py replay --seeds 20 --concurrency 2 8

   Compute is counted in the table's seconds (and in evaluations) of every evaluation any
   trial ran, in the order Ray delivered them. A search "reaches the best" when a trial
   completes (all evaluations) with a final dev_overall within --tolerance (0.005) of the
   table's best final dev_overall; its cost is the compute spent up to that moment, as a
   fraction of the full grid's compute. Also recorded: the best final dev_overall found by
   10%, 25% and 50% of the grid's compute. A search runs until it has reached the best and
   spent 50% of the grid's compute, or spent the whole grid's compute.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_SPACE = ROOT / "benchmarks" / "spaces" / "search_table.yaml"
DEFAULT_TABLE = ROOT / "docs" / "examples" / "search_efficiency" / "search_table.csv"
DEFAULT_OUT = ROOT / "docs" / "examples" / "search_efficiency" / "search_replay.json"
# The grid's dimensions: the table's key, read from each trial's TrialConfig.
KEY_FIELDS = ("train.lr", "model.dropout", "extensions.cosine_sts", "extensions.pcgrad")
BUDGETS = (0.10, 0.25, 0.50)
STRATEGIES = {
    # name: (sampler, scheduler)
    "tpe_asha": ("tpe", "asha"),
    "tpe": ("tpe", "none"),
    "random_asha": ("random", "asha"),
    "random": ("random", "none"),
    "grid": ("grid", "none"),
}
TABLE_COLUMNS = (
    "config_id",
    *KEY_FIELDS,
    "eval_index",
    "evals",
    "step",
    "dev_overall",
    "seconds",
)


# ---------------------------------------------------------------------------------- table
def key_of(flat: dict[str, Any]) -> tuple[Any, ...]:
    """The table key of a flat trial config: its values of KEY_FIELDS, floats rounded."""
    return tuple(
        round(v, 12) if isinstance(v, float) else v for v in (flat[k] for k in KEY_FIELDS)
    )


def build_table(experiment_dir: Path) -> list[dict[str, Any]]:
    """One row per (finished trial, dev evaluation) of a `search_table` sweep.

    `seconds` is the trial's wall time from its start (the driver's record) to the end of that
    evaluation: the set-up before the first step, then the training loop's clock
    (metrics.jsonl `time_s`); the last evaluation also carries the final evaluation
    (held-out test, predictions) that a finished trial pays for.
    """
    rows: list[dict[str, Any]] = []
    records = sorted((experiment_dir / "trials").glob("*.json"))
    if not records:
        raise SystemExit(f"{experiment_dir}: no trials/*.json: not an hpsearch experiment")
    seen: dict[tuple[Any, ...], str] = {}
    for path in records:
        record = json.loads(path.read_text())
        if record.get("status") != "finished":
            raise SystemExit(
                f"{path}: status {record.get('status')!r}: the table needs every grid point "
                f"finished; run `hpsearch resume {experiment_dir}` first"
            )
        run = experiment_dir / record["trial_dir"]
        summary = json.loads((run / "summary.json").read_text())
        evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        evals = [e for e in evals if e.get("dev_overall") is not None]
        setup_s = summary["first_step_at"] - record["started_at"]
        key = key_of(record["config"])
        if key in seen:
            raise SystemExit(f"{path}: configuration {key} also ran as trial {seen[key]}")
        seen[key] = record["trial_id"]
        for index, evaluation in enumerate(evals, start=1):
            seconds = setup_s + evaluation["time_s"]
            if index == len(evals):
                seconds += summary.get("final_eval_s", 0.0)
            rows.append(
                {
                    "config_id": record["trial_id"],
                    **dict(zip(KEY_FIELDS, key, strict=True)),
                    "eval_index": index,
                    "evals": len(evals),
                    "step": evaluation["step"],
                    "dev_overall": round(evaluation["dev_overall"], 6),
                    "seconds": round(seconds, 3),
                }
            )
    counts = {r["evals"] for r in rows}
    if len(counts) != 1:
        raise SystemExit(
            f"{experiment_dir}: trials differ in their number of evaluations {counts}"
        )
    return rows


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


@dataclass(frozen=True)
class Curve:
    """One configuration's recorded dev curve: cumulative seconds and dev_overall per eval."""

    seconds: tuple[float, ...]
    values: tuple[float, ...]

    @property
    def final(self) -> float:
        return self.values[-1]


def read_table(path: Path) -> dict[tuple[Any, ...], Curve]:
    """The table CSV -> {key: Curve}."""
    by_key: dict[tuple[Any, ...], list[tuple[int, float, float]]] = {}
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            flat = {
                "train.lr": float(row["train.lr"]),
                "model.dropout": float(row["model.dropout"]),
                "extensions.cosine_sts": row["extensions.cosine_sts"] == "True",
                "extensions.pcgrad": row["extensions.pcgrad"] == "True",
            }
            by_key.setdefault(key_of(flat), []).append(
                (int(row["eval_index"]), float(row["seconds"]), float(row["dev_overall"]))
            )
    curves = {}
    for key, points in by_key.items():
        points.sort()
        curves[key] = Curve(tuple(p[1] for p in points), tuple(p[2] for p in points))
    return curves


# --------------------------------------------------------------------------------- replay
@dataclass
class Meter:
    """Counts the compute a search spends and when it first finds the best (driver side).

    Shared by a Tune callback (every result and completion) and a stopper (ends the search).
    """

    grid_seconds: float
    grid_evals: int
    target: float
    evals_per_trial: int
    seconds: float = 0.0
    evals: int = 0
    hit_seconds: float | None = None
    hit_evals: int | None = None
    finals: list[tuple[float, int, float]] = field(default_factory=list)  # seconds, evals, value
    trials: int = 0
    stopped_early: int = 0
    last_seconds: dict[str, float] = field(default_factory=dict)
    last_index: dict[str, int] = field(default_factory=dict)

    def result(self, trial_id: str, result: dict[str, Any]) -> None:
        previous = self.last_seconds.get(trial_id, 0.0)
        self.seconds += result["table_seconds"] - previous
        self.evals += 1
        self.last_seconds[trial_id] = result["table_seconds"]
        self.last_index[trial_id] = result["eval_index"]
        if result["eval_index"] == self.evals_per_trial:
            value = result["dev_overall"]
            self.finals.append((self.seconds, self.evals, value))
            if self.hit_seconds is None and value >= self.target:
                self.hit_seconds, self.hit_evals = self.seconds, self.evals

    def complete(self, trial_id: str) -> None:
        self.trials += 1
        if self.last_index.get(trial_id, 0) < self.evals_per_trial:
            self.stopped_early += 1

    def done(self) -> bool:
        """The whole grid's compute spent, or the best found and half the grid's spent (in
        both measures, seconds and evaluations)."""
        spent = min(self.seconds / self.grid_seconds, self.evals / self.grid_evals)
        return spent >= 1.0 or (self.hit_seconds is not None and spent >= max(BUDGETS))

    def best_by(self, fraction: float, measure: str) -> float | None:
        """The best final dev_overall of the trials finished within `fraction` of the grid's
        compute, counted in `measure` ("seconds" or "evals"); None if none finished by then."""
        if measure == "seconds":
            found = [v for s, _, v in self.finals if s <= fraction * self.grid_seconds]
        else:
            found = [v for _, e, v in self.finals if e <= fraction * self.grid_evals]
        return max(found) if found else None

    def outcome(self) -> dict[str, Any]:
        """The search's figures, as fractions of the grid's compute in both measures."""
        return {
            "hit_fraction": None
            if self.hit_seconds is None
            else self.hit_seconds / self.grid_seconds,
            "hit_evals_fraction": None
            if self.hit_evals is None
            else self.hit_evals / self.grid_evals,
            **{f"best_at_{int(b * 100)}": self.best_by(b, "seconds") for b in BUDGETS},
            **{f"best_at_{int(b * 100)}_evals": self.best_by(b, "evals") for b in BUDGETS},
            "trials": self.trials,
            "stopped_early": self.stopped_early,
            "spent_fraction": self.seconds / self.grid_seconds,
            "spent_evals_fraction": self.evals / self.grid_evals,
        }


def _replay_trial(
    config: dict[str, Any], space: Any, table: dict[Any, Curve], scale: float
) -> None:
    """The trainable: this configuration's recorded curve, at `scale` times its speed."""
    from ray import tune

    from trainables.minbert.config import flatten

    trial_config = space.resolve(config)
    curve = table[key_of(flatten(trial_config.model_dump()))]
    previous = 0.0
    last = len(curve.values)
    for index, (seconds, value) in enumerate(zip(curve.seconds, curve.values, strict=True), 1):
        time.sleep(max(0.0, (seconds - previous) * scale))
        previous = seconds
        result = {"dev_overall": value, "table_seconds": seconds, "eval_index": index}
        # as hpsearch.worker's final result: the trial trained to its end (FINISHED)
        tune.report({**result, "final": True} if index == last else result)


def _space_for(
    base_space: Path,
    strategy: str,
    seed: int,
    folder: Path,
    asha: tuple[int, int] | None = None,
) -> Path:
    """The table's space with the strategy's sampler, scheduler and seed (and, for the ASHA
    strategies, `asha` = (grace period, reduction factor) when given)."""
    import yaml

    from hpsearch._yaml import load_strict
    from hpsearch.space_parser import load_search_space

    grid_size = load_search_space(base_space).grid_size()
    sampler, scheduler = STRATEGIES[strategy]
    raw = load_strict(base_space.read_text())
    raw["search"] = {
        **raw["search"],
        "sampler": sampler,
        "scheduler": scheduler,
        "seed": seed,
        # the meter's budget ends a search; the grid runs each point once
        "num_samples": grid_size if sampler == "grid" else 10 * grid_size,
    }
    raw["search"].pop("max_concurrent", None)  # set by replay_one
    if scheduler == "asha" and asha is not None:
        raw["search"]["asha"] = {"grace_period": asha[0], "reduction_factor": asha[1]}
    path = folder / f"{strategy}-{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def replay_one(
    space_path: Path,
    table: dict[Any, Curve],
    concurrency: int,
    scale: float,
    tolerance: float,
    workdir: Path,
) -> dict[str, Any]:
    """One search of one strategy and seed against the table, in real Ray Tune."""
    import optuna
    from ray import tune
    from ray.tune import Callback, RunConfig, Stopper, TuneConfig
    from ray.tune.logger import JsonLoggerCallback

    from hpsearch.searcher import asha_scheduler, search_algorithm
    from hpsearch.space_parser import load_search_space

    space = load_search_space(space_path)
    curves = list(table.values())
    evals_per_trial = len(curves[0].values)
    best = max(c.final for c in curves)
    meter = Meter(
        grid_seconds=sum(c.seconds[-1] for c in curves),
        grid_evals=evals_per_trial * len(curves),
        target=best - tolerance,
        evals_per_trial=evals_per_trial,
    )

    class Metering(Callback):  # type: ignore[misc]
        def on_trial_result(
            self,
            iteration: int,
            trials: list[Any],
            trial: Any,
            result: dict[str, Any],
            **info: Any,
        ) -> None:  # noqa: E501
            meter.result(trial.trial_id, result)

        def on_trial_complete(
            self, iteration: int, trials: list[Any], trial: Any, **info: Any
        ) -> None:  # noqa: E501
            meter.complete(trial.trial_id)

    class Budget(Stopper):  # type: ignore[misc]
        def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
            return False

        def stop_all(self) -> bool:
            return meter.done()

    searcher = search_algorithm(
        space,
        storage=optuna.storages.InMemoryStorage(),
        study_name=f"{space_path.stem}-{concurrency}",
        time_limit=None,
        max_concurrent=concurrency,
        concurrency=concurrency,
    )
    trainable = tune.with_resources(
        tune.with_parameters(_replay_trial, space=space, table=table, scale=scale),
        {"cpu": 1.0 / concurrency},
    )
    started = time.monotonic()
    tuner = tune.Tuner(
        trainable,
        tune_config=TuneConfig(
            search_alg=searcher,
            scheduler=asha_scheduler(space),
            num_samples=space.num_samples,
            reuse_actors=True,
            max_concurrent_trials=concurrency,
        ),
        run_config=RunConfig(
            name=f"{space_path.stem}-{concurrency}",
            storage_path=str(workdir / "ray"),
            stop=Budget(),
            callbacks=[Metering(), JsonLoggerCallback()],
            verbose=0,
        ),
    )
    tuner.fit()
    return {**meter.outcome(), "wall_s": round(time.monotonic() - started, 2)}


@dataclass
class _SimTrial:
    """What Ray's scheduler reads of a trial: its id."""

    trial_id: str


def simulate_one(
    space_path: Path, table: dict[Any, Curve], concurrency: int, tolerance: float
) -> dict[str, Any]:
    """One search against the table on a simulated clock, with the same searcher and scheduler
    objects `hpsearch sweep` builds (hpsearch.searcher), driven as Ray Tune drives them.

    `concurrency` slots run trials; each trial's evaluations arrive at its start time plus the
    table's seconds. Events are handled in time order: each result goes to the searcher
    (`on_trial_result`) and the scheduler (ASHA's `on_trial_result`, CONTINUE or STOP); a trial
    that ends (its last evaluation, or stopped) goes to both `on_trial_complete` with its last
    result, exactly as Tune reports it, and its slot asks the searcher for the next trial. With
    a constant-liar TPE the pending trials are known to the sampler as Tune makes them known.
    """
    import heapq

    import optuna
    from ray.tune.schedulers import TrialScheduler

    from hpsearch.searcher import asha_scheduler, search_algorithm
    from hpsearch.space_parser import load_search_space
    from hpsearch.worker import MAIN_EVAL
    from trainables.minbert.config import flatten

    space = load_search_space(space_path)
    curves = list(table.values())
    evals_per_trial = len(curves[0].values)
    best = max(c.final for c in curves)
    meter = Meter(
        grid_seconds=sum(c.seconds[-1] for c in curves),
        grid_evals=evals_per_trial * len(curves),
        target=best - tolerance,
        evals_per_trial=evals_per_trial,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    searcher = search_algorithm(
        space,
        storage=optuna.storages.InMemoryStorage(),
        study_name=f"{space_path.stem}-{concurrency}",
        time_limit=None,
        max_concurrent=concurrency,
        concurrency=concurrency,
    )
    scheduler = asha_scheduler(space)
    events: list[tuple[float, int, str, int]] = []  # (time, order, trial id, eval index)
    curve_of: dict[str, Curve] = {}
    started_at: dict[str, float] = {}
    order = 0
    launched = 0
    clock = 0.0

    def launch(now: float) -> bool:
        nonlocal order, launched
        if launched >= space.num_samples or meter.done():
            return False
        trial_id = f"t{launched:04d}"
        config = searcher.suggest(trial_id)
        if config is None:  # the limiter or the sampler has nothing now
            return False
        launched += 1
        trial_config = space.resolve(config)
        curve_of[trial_id] = table[key_of(flatten(trial_config.model_dump()))]
        started_at[trial_id] = now
        if scheduler is not None:
            scheduler.on_trial_add(None, _SimTrial(trial_id))
        order += 1
        heapq.heappush(events, (now + curve_of[trial_id].seconds[0], order, trial_id, 1))
        return True

    running = 0
    while running < concurrency and launch(clock):
        running += 1
    while events and not meter.done():
        clock, _, trial_id, index = heapq.heappop(events)
        curve = curve_of[trial_id]
        result = {
            "dev_overall": curve.values[index - 1],
            "table_seconds": curve.seconds[index - 1],
            "eval_index": index,
            "training_iteration": index,
            MAIN_EVAL: index,  # ASHA's clock: the table's trials have no pre-training phase
            "time_total_s": curve.seconds[index - 1],
        }
        if index == evals_per_trial:
            result["final"] = True
        meter.result(trial_id, result)
        searcher.on_trial_result(trial_id, result)
        action = TrialScheduler.CONTINUE
        if scheduler is not None and index < evals_per_trial:
            action = scheduler.on_trial_result(None, _SimTrial(trial_id), result)
        if index < evals_per_trial and action == TrialScheduler.CONTINUE:
            order += 1
            heapq.heappush(
                events, (started_at[trial_id] + curve.seconds[index], order, trial_id, index + 1)
            )
            continue
        if scheduler is not None:
            scheduler.on_trial_complete(None, _SimTrial(trial_id), result)
        searcher.on_trial_complete(trial_id, result)
        meter.complete(trial_id)
        running -= 1
        while running < concurrency and launch(clock):
            running += 1
    return {**meter.outcome(), "wall_s": None}


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """First quartile, median, third quartile (the midpoint of the two nearest ranks); a miss
    is +inf and stays one, never NaN."""
    ordered = sorted(values)

    def at(q: float) -> float:
        position = q * (len(ordered) - 1)
        low, high = ordered[math.floor(position)], ordered[math.ceil(position)]
        return low if low == high else (low + high) / 2

    return at(0.25), at(0.5), at(0.75)


def summarize(runs: list[dict[str, Any]], best: float, measure: str) -> list[dict[str, Any]]:
    """Median and quartiles per (strategy, concurrency) of the compute to reach the best, in
    `measure` ("evals" or "seconds"); a miss counts as +inf."""
    hit_key = "hit_evals_fraction" if measure == "evals" else "hit_fraction"
    suffix = "_evals" if measure == "evals" else ""
    rows = []
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for run in runs:
        groups.setdefault((run["strategy"], run["concurrency"]), []).append(run)
    for (strategy, concurrency), group in sorted(groups.items()):
        hits = [r[hit_key] if r[hit_key] is not None else math.inf for r in group]
        q1, median, q3 = quartiles(hits)
        row: dict[str, Any] = {
            "strategy": strategy,
            "concurrency": concurrency,
            "measure": measure,
            "seeds": len(group),
            "reached": sum(r[hit_key] is not None for r in group),
            "compute_to_best_q1": q1,
            "compute_to_best_median": median,
            "compute_to_best_q3": q3,
        }
        for budget in BUDGETS:
            name = f"best_at_{int(budget * 100)}{suffix}"
            gaps = [best - r[name] if r[name] is not None else math.inf for r in group]
            row[f"gap_at_{int(budget * 100)}_median"] = quartiles(gaps)[1]
        rows.append(row)
    return rows


def _fmt(value: float) -> str:
    """A fraction or gap; "miss" for +inf (not reached, or nothing finished by then)."""
    return "miss" if math.isinf(value) else f"{value:.3f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    measure = rows[0]["measure"] if rows else "evals"
    unit = "evaluations" if measure == "evals" else "seconds"
    lines = [
        f"| strategy | concurrency | reached | compute to best, in {unit}: q1 / median / q3 "
        "(fraction of the grid's) | gap to the best at 10% / 25% / 50% of the grid (median) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['strategy']} | {r['concurrency']} | {r['reached']}/{r['seeds']} | "
            f"{_fmt(r['compute_to_best_q1'])} / {_fmt(r['compute_to_best_median'])} / "
            f"{_fmt(r['compute_to_best_q3'])} | "
            + " / ".join(_fmt(r[f"gap_at_{int(b * 100)}_median"]) for b in BUDGETS)
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    table = commands.add_parser("table", help="experiment folder of a search_table sweep -> CSV")
    table.add_argument("experiment", type=Path)
    table.add_argument("--out", type=Path, default=DEFAULT_TABLE)
    replay = commands.add_parser("replay", help="replay search strategies against the table")
    replay.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    replay.add_argument("--space", type=Path, default=DEFAULT_SPACE)
    replay.add_argument("--seeds", type=int, default=20)
    replay.add_argument("--concurrency", type=int, nargs="+", default=[2, 8])
    replay.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    replay.add_argument("--time-scale", type=float, default=0.002)
    replay.add_argument("--tolerance", type=float, default=0.005)
    replay.add_argument("--num-cpus", type=int, default=2)
    replay.add_argument(
        "--asha",
        type=int,
        nargs=2,
        metavar=("GRACE", "FACTOR"),
        help="ASHA's grace period and reduction factor (default: the space's, 1 and 2)",
    )
    replay.add_argument(
        "--engine",
        choices=("simulated", "tune"),
        default="simulated",
        help="simulated: the searcher and scheduler on a simulated clock (seconds per search); "
        "tune: real Ray Tune with a trainable that sleeps the table's seconds x --time-scale",
    )
    replay.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)

    if args.command == "table":
        rows = build_table(args.experiment.resolve())
        write_table(rows, args.out)
        finals = [r for r in rows if r["eval_index"] == r["evals"]]
        best = max(finals, key=lambda r: r["dev_overall"])
        print(f"{len(finals)} configurations x {rows[0]['evals']} evaluations -> {args.out}")
        print(f"best final dev_overall {best['dev_overall']:.4f} at {best}")
        print(f"grid compute {sum(r['seconds'] for r in finals):.0f} s")
        return 0

    import ray

    from hpsearch.driver import init_ray

    curves = read_table(args.table)
    best = max(c.final for c in curves.values())
    runs: list[dict[str, Any]] = []
    if args.engine == "tune":
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        init_ray(address=None, num_cpus=args.num_cpus)
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
            for concurrency in args.concurrency:
                for strategy in args.strategies:
                    for seed in range(args.seeds):
                        space_path = _space_for(
                            args.space, strategy, seed, Path(tmp), asha=args.asha
                        )
                        if args.engine == "tune":
                            outcome = replay_one(
                                space_path,
                                curves,
                                concurrency,
                                args.time_scale,
                                args.tolerance,
                                Path(tmp),
                            )
                        else:
                            outcome = simulate_one(space_path, curves, concurrency, args.tolerance)
                        runs.append(
                            {
                                "strategy": strategy,
                                "concurrency": concurrency,
                                "seed": seed,
                                **outcome,
                            }
                        )
                        print(json.dumps(runs[-1]), flush=True)
    finally:
        if args.engine == "tune":
            ray.shutdown()
    by_measure = {measure: summarize(runs, best, measure) for measure in ("evals", "seconds")}
    report = {
        "table": str(args.table),
        "configurations": len(curves),
        "best_final": best,
        "tolerance": args.tolerance,
        "asha": args.asha,
        "seeds": args.seeds,
        "engine": args.engine,
        "time_scale": args.time_scale if args.engine == "tune" else None,
        "wall_s": round(time.monotonic() - started, 1),
        "summary": by_measure,
        "runs": runs,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for rows in by_measure.values():
        print(markdown(rows))
    print(f"-> {args.out} ({report['wall_s']} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
