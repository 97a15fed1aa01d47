"""The demo sweep, side by side: this checkout against an earlier commit, in one sitting.

    .venv/bin/python benchmarks/bench_demo_ab.py --base 6462157            # 2 rounds, ABBA
    .venv/bin/python benchmarks/bench_demo_ab.py --base HEAD~5 --rounds 3
    .venv/bin/python benchmarks/bench_demo_ab.py --base 6462157 --head a66086f   # two commits

For a change that should not cost time (a restructure, say): the earlier commit (and, with
--head, the later one instead of this checkout) is checked out into a temporary git worktree,
and both run the demo sweep (`search_spaces/demo.yaml`: 6
MiniLM trials, TPE + ASHA, 2 at a time, with its report) with the same interpreter and the
same installed packages, alternately (A B B A, then again), so that a machine getting busier
or quieter during the run weighs on both alike. Each run is `python -m hpsearch.cli sweep` in
its own checkout, with that checkout first on PYTHONPATH (it wins over the editable install).

Printed per run: the wall time of the whole command, and the sum of the finished trials'
`train_time_s` (training plus its evaluations, from each run folder's summary.json), which
depends less on how the two concurrent trials happened to overlap. Then the mean of each
side and their ratio. Run it on a quiet machine: two busy processes on 2 cores slow each
other down several times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run_demo(checkout: Path, storage: Path) -> tuple[float, float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(checkout)
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    cmd = [sys.executable, "-m", "hpsearch.cli", "sweep", "search_spaces/demo.yaml"]
    cmd += ["--name", "demo", "--storage-path", str(storage), "--exist-ok-suffix"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"demo sweep in {checkout} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    exp = max(storage.glob("demo*"), key=lambda p: p.stat().st_mtime)
    train = 0.0
    for summary in exp.glob("runs/*/summary.json"):
        record = json.loads(summary.read_text())
        if record.get("status") == "finished":
            train += float(record["train_time_s"])
    return wall, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--head", help="the later commit (default: this checkout as it is)")
    parser.add_argument("--rounds", type=int, default=2, help="ABBA rounds (default 2)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-demo-ab-") as tmp:
        base = Path(tmp) / "base"
        head = Path(tmp) / "head" if args.head else REPO
        worktrees = [(base, args.base)] + ([(head, args.head)] if args.head else [])
        for folder, revision in worktrees:
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(folder), revision],
                           cwd=REPO, check=True)  # fmt: skip
        try:
            results: dict[str, list[tuple[float, float]]] = {"base": [], "head": []}
            order = ["base", "head", "head", "base"] * args.rounds
            for i, side in enumerate(order, start=1):
                checkout = base if side == "base" else head
                wall, train = _run_demo(checkout, Path(tmp) / f"runs-{side}")
                results[side].append((wall, train))
                print(f"run {i:2d} {side:4s}: wall {wall:6.1f} s, finished trials' train "
                      f"{train:6.1f} s", flush=True)  # fmt: skip
        finally:
            for folder, _ in worktrees:
                subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=REPO)
    for what, k in (("wall", 0), ("train", 1)):
        b = statistics.mean(r[k] for r in results["base"])
        h = statistics.mean(r[k] for r in results["head"])
        print(f"{what:5s}: base {b:6.1f} s, HEAD {h:6.1f} s, HEAD/base {h / b:.3f}")


if __name__ == "__main__":
    main()
