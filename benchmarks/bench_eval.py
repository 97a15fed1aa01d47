"""One full dev evaluation, before and after: the previous commit's `evaluate` against this tree's.

    .venv/bin/python benchmarks/bench_eval.py --data-dir ../shared/data/cs224n --threads 1

"Before" (A) is the code of `--before` (default: the last commit before `predict_splits`, the
cached evaluation, or HEAD while that is not committed yet), unpacked with `git archive` into a
temporary folder; "after" (B) is this working tree. Each runs in a worker process of its own
that loads the same model (the trial's default: MiniLM, mean pooling, siamese pairs; the heads'
random initial weights are written once and loaded by both) and the same dev splits, and then
runs `evaluate(model, dev, "dev", tokenizer, batch_size, cpu)` on command: the whole evaluation,
scores included. A runs at `--old-batch-size` (64, the old train.eval_batch_size: 64 examples,
so a pair batch was 2 x 64 sentences), B at `--batch-size` (default: train.eval_batch_size).

The workers take turns (A B, B A, ...) after one untimed run each, one at a time, so that load
from other processes hits both alike. Reported: the median wall times, their ratio, the
median of the paired ratios, the same of the workers' CPU times (with one thread: what the
evaluation costs, whatever else the machine runs), the rows and positions (rows x padded
width) of each path's encoder calls, and whether the predictions agree: classes exactly, raw
scores within 1e-5 (relative, above 1). `--limit N` scores the first N rows of each dev split (the loader's seeded order, so a
sample, not the file's head). `--sweep 64,128,256` also times B at those batch sizes, in the
same rotation: how train.eval_batch_size was chosen.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # relative above 1, absolute below: float32 rounding of another batch shape
NEW_API = "def predict_splits"  # what the "before" commit must not have yet


# ------------------------------------------------------------------------------- the worker
class EncoderCalls:
    """A forward pre-hook of the encoder's embeddings: the rows and padded positions of every
    encoder pass. The embeddings, not `BertModel.forward`: evaluation encodes through
    `BertModel.encode` (the hidden states without the pooler), which bypasses forward."""

    def __init__(self) -> None:
        self.work = {"rows": 0, "positions": 0, "calls": 0}

    def __call__(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.dim() == 2:
            self.work["rows"] += ids.shape[0]
            self.work["positions"] += ids.numel()
            self.work["calls"] += 1


def worker(root: Path, overrides: list[str], weights: Path, threads: int | None) -> None:
    """Serve evaluations of the `trainables` under `root`: one JSON command per stdin line,
    one JSON reply per line on the original stdout (everything else printed goes to stderr)."""
    replies: IO[str] = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout = sys.stderr
    sys.path.insert(0, str(root))
    import time

    import torch

    import trainables

    if Path(trainables.__file__).resolve().parents[1] != root.resolve():
        raise SystemExit(f"worker imported {trainables.__file__}, not the code under {root}")
    from trainables.minbert import evaluation
    from trainables.minbert.config import load_trial_config
    from trainables.minbert.data import TASKS, load_multitask_data
    from trainables.minbert.encoder import build_encoder
    from trainables.minbert.extensions.pair_similarity import make_pair_similarity
    from trainables.minbert.multitask import MultitaskBert

    if threads:
        torch.set_num_threads(threads)
    cfg = load_trial_config(None, overrides)
    torch.manual_seed(cfg.train.seed)
    tokenizer, encoder = build_encoder(cfg)
    m = cfg.model
    sts_head = make_pair_similarity(cfg, encoder.config.hidden_size)
    model = MultitaskBert(encoder, m.dropout, m.pair_encoding, m.pooling, sts_head)
    if weights.is_file():
        model.load_state_dict(torch.load(weights, weights_only=True))
    else:  # the first worker writes the weights the others load
        torch.save(model.state_dict(), weights)
    data = load_multitask_data(cfg.data, tokenizer, cfg.model.pair_encoding)
    dev, cpu = data.dev, torch.device("cpu")
    replies.write(
        json.dumps(
            {
                "ready": True,
                "data_dir": str(data.data_dir),
                "dev_sizes": {t: len(dev[t]) for t in TASKS},
                "threads": torch.get_num_threads(),
                "torch": torch.__version__,
            }
        )
        + "\n"
    )
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        bs = int(cmd["batch_size"])
        if cmd["cmd"] == "run":
            t0, c0 = time.perf_counter(), time.process_time()
            scores = evaluation.evaluate(model, dev, "dev", tokenizer, bs, cpu)
            seconds, cpu_s = time.perf_counter() - t0, time.process_time() - c0
            replies.write(json.dumps({"seconds": seconds, "cpu_s": cpu_s, "scores": scores}))
        elif cmd["cmd"] == "predict":  # raw predictions and the encoder's work, untimed
            calls = EncoderCalls()
            handle = model.encoder.embeddings.register_forward_pre_hook(calls, with_kwargs=True)
            try:
                if hasattr(evaluation, "predict_splits"):
                    out = evaluation.predict_splits(model, dev, tokenizer, bs, cpu)
                    preds = {t: (p.ids, p.preds) for t, p in out.items()}
                else:  # the code before: evaluation.predict, task by task
                    predict = evaluation.predict  # type: ignore[attr-defined]
                    preds = {}
                    for t in TASKS:
                        ids, p, _ = predict(model, dev[t], tokenizer, bs, cpu)
                        preds[t] = (ids, p)
            finally:
                handle.remove()
            torch.save(preds, cmd["out"])
            replies.write(json.dumps({"work": calls.work}))
        replies.write("\n")


# ------------------------------------------------------------------------------- the driver
class Worker:
    """A worker process serving one version of the code."""

    def __init__(self, root: Path, overrides: list[str], weights: Path, threads: int | None):
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(root)]
        cmd += ["--weights", str(weights)] + [f"--set={o}" for o in overrides]
        if threads:
            cmd += ["--threads", str(threads)]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        self.info = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the worker stopped (exit {self.proc.wait()}); see its stderr")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._reply()

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.ask(cmd="quit")
            except (BrokenPipeError, RuntimeError, json.JSONDecodeError):
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def default_before() -> str:
    """The last commit before the cached evaluation; HEAD while it is not committed."""
    introduced = git(
        "log", "--format=%H", "-S", NEW_API, "--", "trainables/minbert/evaluation.py"
    ).split()
    return f"{introduced[-1]}^" if introduced else "HEAD"


def unpack(rev: str, dest: Path) -> str:
    """The `trainables` package of commit `rev` under `dest`; returns the full hash."""
    full = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    tar = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", full, "trainables"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, filter="data")
    return full


def agreement(old_file: Path, new_file: Path) -> dict[str, dict[str, Any]]:
    """Per task: the largest relative difference of the raw predictions, the class
    disagreements, and how many of those sit within rounding of the decision boundary."""
    import torch

    old, new = torch.load(old_file, weights_only=True), torch.load(new_file, weights_only=True)
    out: dict[str, dict[str, Any]] = {}
    for task, (new_ids, b) in new.items():
        ref = dict(zip(old[task][0], old[task][1], strict=True))
        if sorted(ref) != sorted(new_ids):
            raise RuntimeError(f"{task}: A and B predicted different ids")
        a = torch.stack([ref[i] for i in new_ids])
        rel = ((b - a).abs() / a.abs().clamp(min=1.0)).max().item() if len(a) else 0.0
        if task == "sst":
            differ = a.argmax(-1) != b.argmax(-1)
            top2 = a.topk(2, dim=-1).values
            margin = top2[:, 0] - top2[:, 1]
        elif task == "para":
            differ, margin = (a > 0) != (b > 0), a.abs()
        else:
            differ, margin = torch.zeros(len(a), dtype=torch.bool), a.abs()
        out[task] = {
            "n": len(a),
            "max_rel_diff": rel,
            "class_differences": int(differ.sum()),
            "of_which_ties": int((differ & (margin <= 10 * TOLERANCE)).sum()),
        }
    return out


def build_overrides(args: argparse.Namespace) -> list[str]:
    overrides = [
        f"model.checkpoint={args.checkpoint}",
        f"model.pair_encoding={args.pair_encoding}",
        f"data.max_length={args.max_length}",
    ]
    if args.data_dir is not None:
        overrides.append(f"data.data_dir={Path(args.data_dir).resolve()}")
    if args.limit is not None:
        overrides.append(f"data.max_eval_examples={args.limit}")
    return overrides + list(args.set)


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.repeats < 1:
        raise SystemExit("error: --repeats must be at least 1")
    overrides = build_overrides(args)
    sys.path.insert(0, str(REPO))
    from trainables.minbert.config import load_trial_config

    new_bs = args.batch_size or load_trial_config(None, overrides).train.eval_batch_size
    sweep = sorted({int(x) for x in args.sweep.split(",") if x.strip()}) if args.sweep else []
    if min([args.old_batch_size, new_bs, *sweep]) < 1:
        raise SystemExit("error: batch sizes must be positive")
    before = args.before or default_before()
    load_before = _load_average()
    with tempfile.TemporaryDirectory(prefix="bench_eval-") as tmp:
        tmpdir = Path(tmp)
        before_hash = unpack(before, tmpdir / "before")
        weights = tmpdir / "weights.pt"
        workers = {"B": Worker(REPO, overrides, weights, args.threads)}  # B writes the weights
        try:
            workers["A"] = Worker(tmpdir / "before", overrides, weights, args.threads)
            sizes = {"A": args.old_batch_size, "B": new_bs}
            keys = ["A", "B"]
            for bs in sweep:
                if bs != new_bs:
                    sizes[f"B{bs}"] = bs
                    keys.append(f"B{bs}")
            worker_of = {k: workers["A" if k == "A" else "B"] for k in keys}
            work = {}
            for k in keys:  # one untimed run each: predictions, work counts, warm-up
                out = tmpdir / f"{k}.pt"
                work[k] = worker_of[k].ask(cmd="predict", batch_size=sizes[k], out=str(out))[
                    "work"
                ]
            agree = agreement(tmpdir / "A.pt", tmpdir / "B.pt")
            times: dict[str, list[float]] = {k: [] for k in keys}
            cpu_times: dict[str, list[float]] = {k: [] for k in keys}
            scores: dict[str, dict[str, float]] = {}
            for r in range(args.repeats):
                for k in keys if r % 2 == 0 else keys[::-1]:  # A B ..., ... B A, ...
                    reply = worker_of[k].ask(cmd="run", batch_size=sizes[k])
                    times[k].append(reply["seconds"])
                    cpu_times[k].append(reply["cpu_s"])
                    scores[k] = reply["scores"]
        finally:
            for w in workers.values():
                w.close()
    info = workers["B"].info
    median = {k: statistics.median(v) for k, v in times.items()}
    median_cpu = {k: statistics.median(v) for k, v in cpu_times.items()}
    paired = [a / b for a, b in zip(times["A"], times["B"], strict=True)]
    score_match = all(
        abs(scores["A"][k] - scores["B"][k]) <= (0 if "acc" in k else 1e-6) for k in scores["A"]
    )
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if args.record_argv else None,
        "machine": {
            "cpu": cpu_model_name(),
            "cores": os.cpu_count(),
            "torch": info["torch"],
            "threads": info["threads"],
            "load_average": [load_before, _load_average()],
        },
        "setup": {
            "before": before_hash,
            "after": "working tree at " + git("rev-parse", "HEAD"),
            "overrides": overrides,
            "data_dir": info["data_dir"],
            "limit": args.limit,
            "dev_sizes": info["dev_sizes"],
            "batch_sizes": sizes,
            "repeats": args.repeats,
        },
        "times_s": times,
        "median_s": median,
        "cpu_s": cpu_times,
        "median_cpu_s": median_cpu,
        "speedup_median": median["A"] / median["B"],
        "speedup_cpu_median": median_cpu["A"] / median_cpu["B"],
        "speedup_paired_median": statistics.median(paired),
        "work": work,
        "scores": scores,
        "agreement": agree,
        "match": score_match
        and all(
            row["class_differences"] == row["of_which_ties"] and row["max_rel_diff"] <= TOLERANCE
            for row in agree.values()
        ),
    }


def report(r: dict[str, Any]) -> str:
    mach, setup, med, work = r["machine"], r["setup"], r["median_s"], r["work"]
    lines = [
        f"machine: {mach['cpu']}, {mach['cores']} cores, torch {mach['torch']}, "
        f"threads {mach['threads']}, load average {mach['load_average'][0]} -> "
        f"{mach['load_average'][1]}",
        f"A before: {setup['before'][:12]}; B after: {setup['after'][:30]}",
        f"data: {setup['data_dir']} dev "
        + ", ".join(f"{t} {n}" for t, n in setup["dev_sizes"].items())
        + f" (limit {setup['limit']}); "
        + " ".join(setup["overrides"][:3]),
        f"runs: {setup['repeats']} timed per path, alternating, after one untimed each",
        "",
        f"{'path':<24}{'wall s':>8}{'cpu s':>8}  {'wall s of each run':<24}{'rows':>7}"
        f"{'positions':>11}{'calls':>7}",
    ]
    for k, runs in r["times_s"].items():
        name = ("A before" if k == "A" else "B after") + f" (batch {setup['batch_sizes'][k]})"
        w = work[k]
        lines.append(
            f"{name:<24}{med[k]:>8.2f}{r['median_cpu_s'][k]:>8.2f}  "
            f"{' '.join(f'{t:.2f}' for t in runs):<24}"
            f"{w['rows']:>7}{w['positions']:>11}{w['calls']:>7}"
        )
    share = work["B"]["positions"] / work["A"]["positions"] if work["A"]["positions"] else 0.0
    lines += [
        "",
        f"speedup A/B: {r['speedup_median']:.2f}x of the median wall times, "
        f"{r['speedup_paired_median']:.2f}x the median of paired runs, "
        f"{r['speedup_cpu_median']:.2f}x of the median CPU times; B computes "
        f"{share:.1%} of A's encoder positions",
        "scores: "
        + "; ".join(
            f"{k.removeprefix('dev_')} A {r['scores']['A'][k]:.6f} B {r['scores']['B'][k]:.6f}"
            for k in r["scores"]["A"]
        ),
        "agreement: "
        + "; ".join(
            f"{t} max rel diff {a['max_rel_diff']:.1e}, class differences "
            f"{a['class_differences']} (ties {a['of_which_ties']})"
            for t, a in r["agreement"].items()
        ),
        f"predictions match: {'yes' if r['match'] else 'NO'}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--data-dir", default=None, help="CS224N files (default: the built-in synthetic set)"
    )
    parser.add_argument(
        "--checkpoint",
        default="minilm",
        help="'minilm', a BERT folder, or 'random' (model.* sizes via --set)",
    )
    parser.add_argument("--pair-encoding", default="siamese", choices=["siamese", "cross"])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument(
        "--limit", type=int, default=None, help="dev rows per task (default: all of them)"
    )
    parser.add_argument("--before", default=None, help="the 'before' commit (default: see above)")
    parser.add_argument(
        "--old-batch-size", type=int, default=64, help="A's batch size (the old default)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=None, help="B's sequences per encoder call"
    )
    parser.add_argument(
        "--sweep", default="", help="also time B at these batch sizes, e.g. 64,128,256,512"
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per path")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="trial-config override, e.g. model.checkpoint=random (repeatable)",
    )
    parser.add_argument("--json", default=None, metavar="OUT", help="also write the figures here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--weights", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.record_argv = argv is None
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.worker:
        worker(Path(args.worker), list(args.set), Path(args.weights), args.threads)
        return None
    result = run(args)
    print(report(result))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    if not result["match"]:
        raise SystemExit(1)
    return result


if __name__ == "__main__":
    main()
