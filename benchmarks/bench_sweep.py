"""Sweep overhead: how long a trial takes to reach its first training step, the share of a
sweep's slot time spent outside training and evaluation, and the trial workers' memory.

    .venv/bin/python benchmarks/bench_sweep.py                 # 8 short trials, 2 at a time
    .venv/bin/python benchmarks/bench_sweep.py --base 91a7963 --rounds 1   # old path beside
    .venv/bin/python benchmarks/bench_sweep.py --trials 50 --max-steps 4   # memory over 50

It runs a real `hpsearch sweep` (Ray Tune + Optuna + DeepSpeed) on the built-in synthetic
data, then reads the experiment folder:
  - sweep_timing.json: when `Tuner.fit` started and ended (wall clock);
  - trials/<id>.json: `started_at` / `ended_at`, wall-clock times the driver saw the trial
    start and end;
  - runs/<id>/summary.json: `first_step_at` (wall clock of the first optimizer step's end),
    `setup_time_s`, `train_time_s` (training and the evaluations during it),
    `final_eval_s` (the final dev, train-subset and held-out test evaluation) and
    `peak_mem_mb` (the worker's peak RSS during the trial: VmHWM, reset at each trial's
    set-up, so a reused worker reports each trial's own peak);
  - trial_<id>/result.json: the pid of the worker process that ran the trial;
  - the size of each ended trial's run checkpoints and of Ray's copy of its last reported
    checkpoint, measured and then deleted as the trial ends (class CheckpointPruner).
Overhead per trial = first_step_at - started_at. The share outside training is
1 - sum(train_time_s + final_eval_s) / (sweep wall time x trials running at once): the
fraction of the slots the sweep held that did not go to training or evaluation.

Memory: besides `peak_mem_mb`, a thread polls the resident memory of every Ray worker process
of the sweep (psutil, every 0.2 s) and keeps, per trial, the largest RSS its worker had
between the trial's start and end. The first 5 and the last 5 trials to end that ran in a
reused worker (not a worker's first trial) are compared; the fresh workers' trials are
reported apart (their peak leaves out what a worker holds from one trial to the next).

--base REV runs the same sweep also on a git worktree of REV (the same interpreter and
packages, that checkout first on PYTHONPATH), alternately with this checkout, or with a
worktree of --head REV (A B B A per round), and prints both side by side. 91a7963 is the last
commit with a fresh worker process per trial and full checkpoint copies into Ray's folders.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

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
WORKER_TITLE = "ray::ImplicitFunc"  # how Ray names a Tune function trial's worker process


def make_space(path: Path, args: argparse.Namespace) -> None:
    base: dict[str, Any] = {
        **MODELS[args.model],
        "data.max_length": 48,
        "data.max_train_examples": args.examples,
        "data.max_eval_examples": 64,
        "data.train_eval_examples": 32,
        "train.batch_size": 16,
        "train.evals_per_epoch": 2,
        "train.epochs": 1,
    }
    if args.max_steps:
        base["train.max_steps"] = args.max_steps
    space = {
        "name": "bench_sweep",
        "description": "sweep-overhead benchmark",
        "base": base,
        "search": {
            "sampler": "random",
            "seed": 0,
            "num_samples": args.trials,
            "max_concurrent": args.concurrent,
            "metric": "dev_overall",
            "mode": "max",
            "scheduler": "none",
        },
        "parameters": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True}},
    }
    path.write_text(yaml.safe_dump(space, sort_keys=False))


class RssSampler(threading.Thread):
    """Polls the RSS of the Ray trial workers below one process: pid -> [(time, MB)]."""

    def __init__(self, root_pid: int, period_s: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.period_s = root_pid, period_s
        self.samples: dict[int, list[tuple[float, float]]] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
        except psutil.Error:
            return
        while not self.stop.is_set():
            try:
                children = root.children(recursive=True)
            except psutil.Error:
                return
            now = time.time()
            for proc in children:
                try:
                    if not (proc.cmdline() or [""])[0].startswith(WORKER_TITLE):
                        continue
                    rss = proc.memory_info().rss / 2**20
                except psutil.Error:
                    continue
                self.samples.setdefault(proc.pid, []).append((now, rss))
            self.stop.wait(self.period_s)

    def peak(self, pid: int, start: float, end: float) -> float | None:
        values = [mb for t, mb in self.samples.get(pid, []) if start <= t <= end]
        return max(values) if values else None


def _megabytes(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20


class CheckpointPruner(threading.Thread):
    """Measures, then deletes, the checkpoints of each trial that has ended: its run folder's
    (runs/<id>/checkpoints) and the copy Ray keeps (trial_<id>/checkpoint_*). Nothing reads
    them once a trial has ended, and a MiniLM checkpoint is 300 MB: 8 trials of the old path
    kept about 5 GB, more than this machine's disk could spare."""

    def __init__(self, exp: Path, period_s: float = 2.0) -> None:
        super().__init__(daemon=True)
        self.exp, self.period_s = exp, period_s
        self.sizes: dict[str, tuple[float, float]] = {}  # trial id -> (run MB, Ray copy MB)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            self.prune()

    def prune(self) -> None:
        for path in sorted((self.exp / "trials").glob("*.json")):
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            tid = rec.get("trial_id")
            if rec.get("status") == "running" or tid in self.sizes:
                continue
            run_ckpts = self.exp / "runs" / tid / "checkpoints"
            ray_ckpts = list((self.exp / f"trial_{tid}").glob("checkpoint_*"))
            run_mb = _megabytes(run_ckpts) if run_ckpts.is_dir() else 0.0
            ray_mb = sum(_megabytes(c) for c in ray_ckpts)
            self.sizes[tid] = (run_mb, ray_mb)
            shutil.rmtree(run_ckpts, ignore_errors=True)
            for folder in ray_ckpts:
                shutil.rmtree(folder, ignore_errors=True)


def run_sweep(checkout: Path, storage: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One `hpsearch sweep` of the benchmark space in `checkout`; its figures."""
    space = storage / "bench_sweep.yaml"
    storage.mkdir(parents=True, exist_ok=True)
    make_space(space, args)
    env = dict(os.environ, PYTHONPATH=str(checkout), HF_HUB_OFFLINE="1")
    cmd = [sys.executable, "-m", "hpsearch.cli", "sweep", str(space)]
    cmd += ["--storage-path", str(storage), "--num-cpus", str(args.concurrent), "--no-report"]
    t0 = time.time()
    with open(storage / "console.txt", "w") as console:
        proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=console, stderr=console)
        sampler = RssSampler(proc.pid)
        pruner = CheckpointPruner(storage / "bench_sweep")
        sampler.start()
        pruner.start()
        proc.wait()
        for thread in (sampler, pruner):
            thread.stop.set()
            thread.join()
        pruner.prune()
    wall = time.time() - t0
    if proc.returncode != 0:
        tail = (storage / "console.txt").read_text()[-3000:]
        sys.exit(f"sweep in {checkout} failed ({proc.returncode}):\n{tail}")
    result = figures(storage / "bench_sweep", args.concurrent, sampler, wall)
    result["console_lines"] = len((storage / "console.txt").read_text().splitlines())
    if pruner.sizes:
        result["run_checkpoints_mb_per_trial"] = round(
            statistics.median(run for run, _ in pruner.sizes.values()), 1
        )
        result["ray_checkpoint_kb_per_trial"] = round(
            statistics.median(ray for _, ray in pruner.sizes.values()) * 1024, 1
        )
    return result


def figures(exp: Path, concurrent: int, sampler: RssSampler, wall: float) -> dict[str, Any]:
    fit = json.loads((exp / "sweep_timing.json").read_text())[0]
    sweep_start, sweep_end = fit["started_at"], fit["ended_at"]
    trials = []
    for rec_path in sorted((exp / "trials").glob("*.json")):
        rec = json.loads(rec_path.read_text())
        summary = json.loads((exp / rec["trial_dir"] / "summary.json").read_text())
        lines = exp / rec["ray_trial_dir"].rstrip("/").split("/")[-1] / "result.json"
        pid = json.loads(lines.read_text().splitlines()[-1])["pid"]
        trials.append(
            {
                "ended_at": rec["ended_at"],
                "overhead": summary["first_step_at"] - rec["started_at"],
                "train": summary["train_time_s"] + summary["final_eval_s"],
                "setup": summary["setup_time_s"],
                "peak_mem_mb": summary["peak_mem_mb"],
                "rss_mb": sampler.peak(pid, rec["started_at"], rec["ended_at"]),
                "pid": pid,
                "started_at": rec["started_at"],
            }
        )
    first_of_worker: dict[int, float] = {}
    for t in sorted(trials, key=lambda t: t["started_at"]):
        first_of_worker.setdefault(t["pid"], t["started_at"])
    for t in trials:  # a worker's first trial ran in a fresh process; the others reused it
        t["reused"] = t["started_at"] > first_of_worker[t["pid"]]
    trials.sort(key=lambda t: t["ended_at"])  # in the order the trials ended
    fit_wall = sweep_end - sweep_start
    overheads = [t["overhead"] for t in trials]
    outside = 1 - sum(t["train"] for t in trials) / (fit_wall * concurrent)
    result: dict[str, Any] = {
        "trials": len(trials),
        "worker_processes": len({t["pid"] for t in trials}),
        "command_wall_s": round(wall, 1),
        "fit_wall_s": round(fit_wall, 1),
        "overhead_to_first_step_s_median": round(statistics.median(overheads), 2),
        "overhead_to_first_step_s_max": round(max(overheads), 2),
        "setup_time_s_median": round(statistics.median(t["setup"] for t in trials), 2),
        "train_and_eval_s_median": round(statistics.median(t["train"] for t in trials), 2),
        "share_outside_training": round(outside, 3),
    }
    # Memory over reused trials: the first 5 and the last 5 trials to end that ran in a
    # worker process an earlier trial had used (a worker's first trial pays the process's
    # own start-up and is reported apart, as "fresh").
    fresh = [t["peak_mem_mb"] for t in trials if not t["reused"]]
    if fresh:
        result["fresh_trials"] = len(fresh)
        result["fresh_peak_mem_mb_median"] = round(statistics.median(fresh), 1)
    result["peak_mem_mb_series"] = [
        [t["pid"], t["reused"], t["peak_mem_mb"], t["rss_mb"] and round(t["rss_mb"], 1)]
        for t in trials
    ]
    reused = [t for t in trials if t["reused"]]
    if len(reused) >= 10:
        for key, name in (("peak_mem_mb", "peak_mem_mb"), ("rss_mb", "psutil_rss_mb")):
            values = [t[key] for t in reused if t[key] is not None]
            if len(values) >= 10:
                first, last = statistics.mean(values[:5]), statistics.mean(values[-5:])
                result[f"{name}_first5"] = round(first, 1)
                result[f"{name}_last5"] = round(last, 1)
                result[f"{name}_max"] = round(max(values), 1)
                result[f"{name}_last5_vs_first5"] = round(last / first - 1, 4)
    return result


def _median_of(runs: list[dict[str, Any]], key: str) -> Any:
    values = [r[key] for r in runs if key in r]
    if not values:
        return None
    value = statistics.median(values)
    return round(value, 3) if isinstance(value, float) else value


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--concurrent", type=int, default=2)
    p.add_argument("--model", choices=sorted(MODELS), default="minilm")
    p.add_argument("--examples", type=int, default=256, help="training examples per task")
    p.add_argument("--max-steps", type=int, help="cap each trial's optimizer steps")
    p.add_argument("--base", help="also run a worktree of this git revision (A/B, interleaved)")
    p.add_argument("--head", help="with --base: run this revision's worktree, not this checkout")
    p.add_argument("--rounds", type=int, default=1, help="A B B A rounds with --base")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--keep", help="keep the experiment folders here (default: a temp folder)")
    args = p.parse_args()

    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp_name:
        tmp = Path(args.keep) if args.keep else Path(tmp_name)
        runs: dict[str, list[dict[str, Any]]] = {"base": [], "head": []}
        order = ["base", "head", "head", "base"] * args.rounds if args.base else ["head"]
        checkouts = {"base": tmp / "base-checkout", "head": tmp / "head-checkout"}
        revisions = {"base": args.base, "head": args.head if args.base else None}
        for side, revision in revisions.items():
            if revision:
                subprocess.run(["git", "worktree", "add", "-q", "--detach",
                                str(checkouts[side]), revision], cwd=REPO, check=True)  # fmt: skip
            else:
                checkouts[side] = REPO
        try:
            for i, side in enumerate(order, start=1):
                checkout = checkouts[side]
                result = run_sweep(checkout, tmp / f"run-{i}-{side}", args)
                runs[side].append(result)
                print(
                    f"run {i} {side}: first step {result['overhead_to_first_step_s_median']} s "
                    f"(median), outside training {result['share_outside_training']:.1%}, "
                    f"fit {result['fit_wall_s']} s, {result['worker_processes']} worker "
                    f"processes, load {os.getloadavg()[0]:.2f}",
                    flush=True,
                )
        finally:
            for side, revision in revisions.items():
                if revision:
                    subprocess.run(
                        ["git", "worktree", "remove", "--force", str(checkouts[side])], cwd=REPO
                    )
    sides = [s for s in ("base", "head") if runs[s]]
    keys = [k for k in runs["head"][0] if not k.endswith("_series")]  # the series: in --json
    label = {"base": f"base {args.base}", "head": args.head or "this checkout"}
    print(f"\n{'figure (median over runs)':40s}" + "".join(f"{label[s]:>20s}" for s in sides))
    for key in keys:
        print(f"{key:40s}" + "".join(f"{str(_median_of(runs[s], key)):>20s}" for s in sides))
    head = runs["head"]
    print(
        f"\n{head[0]['trials']} trials, {args.concurrent} at a time: trial start to first step "
        f"{_median_of(head, 'overhead_to_first_step_s_median')} s (median); "
        f"{_median_of(head, 'share_outside_training'):.1%} of the sweep's slot time outside "
        "training and evaluation"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
