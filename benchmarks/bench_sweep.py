"""Sweep overhead: how long a trial takes to reach its first training step, and the share of
a sweep's wall time spent outside training and evaluation.

    .venv/bin/python benchmarks/bench_sweep.py                 # 8 short trials, 2 at a time
    .venv/bin/python benchmarks/bench_sweep.py --trials 12 --model minilm

It runs a real `hpsearch sweep` (Ray Tune + Optuna + DeepSpeed) on the built-in synthetic
data, then reads the experiment folder:
  - sweep_timing.json: when `Tuner.fit` started and ended (wall clock);
  - trials/<id>.json: `started_at` / `ended_at`, wall-clock times the driver saw the trial
    start and end;
  - runs/<id>/summary.json: `first_step_at` (wall clock of the first optimizer step's end),
    `setup_time_s`, `train_time_s` (training and the evaluations during it) and
    `final_eval_s` (the final dev, train-subset and held-out test evaluation).
Overhead per trial = first_step_at - started_at. The share outside training is
1 - sum(train_time_s + final_eval_s) / (sweep wall time x trials running at once): the fraction of the
slots the sweep held that did not go to training or evaluation.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

MODELS = {
    # 2-layer hidden-32 random init: isolates the framework's own overhead.
    "tiny": {
        "model.checkpoint": "random",
        "model.hidden_size": 32,
        "model.num_layers": 2,
        "model.num_heads": 2,
        "model.intermediate_size": 64,
    },
    "minilm": {"model.checkpoint": "minilm"},
}


def make_space(path: Path, trials: int, concurrent: int, model: str, examples: int) -> None:
    space = {
        "name": "bench_sweep",
        "description": "sweep-overhead benchmark",
        "base": {
            **MODELS[model],
            "data.max_length": 48,
            "data.max_train_examples": examples,
            "data.max_eval_examples": 64,
            "data.train_eval_examples": 32,
            "train.batch_size": 16,
            "train.evals_per_epoch": 2,
            "train.epochs": 1,
        },
        "search": {
            "sampler": "random",
            "seed": 0,
            "num_samples": trials,
            "max_concurrent": concurrent,
            "metric": "dev_overall",
            "mode": "max",
            "scheduler": "none",
        },
        "parameters": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True}},
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--model", choices=sorted(MODELS), default="minilm")
    p.add_argument("--examples", type=int, default=256, help="training examples per task")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        space = tmp / "bench_sweep.yaml"
        make_space(space, args.trials, args.concurrent, args.model, args.examples)
        t0 = time.time()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "hpsearch.cli",
                "sweep",
                str(space),
                "--storage-path",
                str(tmp),
                "--num-cpus",
                str(args.concurrent),
                "--no-report",
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )
        wall = time.time() - t0
        exp = tmp / "bench_sweep"
        fit = json.loads((exp / "sweep_timing.json").read_text())[0]
        sweep_start, sweep_end = fit["started_at"], fit["ended_at"]
        overheads, train, setup = [], [], []
        for rec_path in sorted((exp / "trials").glob("*.json")):
            rec = json.loads(rec_path.read_text())
            summary = json.loads((exp / rec["trial_dir"] / "summary.json").read_text())
            overheads.append(summary["first_step_at"] - rec["started_at"])
            train.append(summary["train_time_s"] + summary["final_eval_s"])
            setup.append(summary["setup_time_s"])
    fit_wall = sweep_end - sweep_start
    outside = 1 - sum(train) / (fit_wall * args.concurrent)
    result = {
        "trials": len(train),
        "concurrent": args.concurrent,
        "model": args.model,
        "command_wall_s": round(wall, 1),
        "fit_wall_s": round(fit_wall, 1),
        "overhead_to_first_step_s_median": round(statistics.median(overheads), 2),
        "overhead_to_first_step_s_max": round(max(overheads), 2),
        "setup_time_s_median": round(statistics.median(setup), 2),
        "train_and_eval_s_median": round(statistics.median(train), 2),
        "share_outside_training": round(outside, 3),
    }
    for k, v in result.items():
        print(f"{k:36s} {v}")
    print(
        f"\n{len(train)} trials, {args.concurrent} at a time: trial start to first step "
        f"{result['overhead_to_first_step_s_median']} s (median); "
        f"{outside:.1%} of the sweep's slot time outside training and evaluation"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
