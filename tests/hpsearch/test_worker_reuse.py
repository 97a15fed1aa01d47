"""Warm workers between trials (`reuse_actors`), and Ray checkpoints that point to the run
checkpoint instead of copying it, and per-trial peak memory in a reused process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from hpsearch import worker as worker_mod
from trainables.minbert.config import load_trial_config
from trainables.minbert.run_checkpoint import find_checkpoint
from trainables.minbert.runtime import peak_memory_mb, reset_peak_memory
from trainables.minbert.trainer import train_trial

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "model.checkpoint=random",
    "model.hidden_size=32",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "data.max_length=32",
    "data.max_train_examples=48",
    "data.max_eval_examples=24",
    "data.train_eval_examples=16",
    "train.batch_size=8",
    "train.lr=1e-3",
    "train.evals_per_epoch=3",
    "train.keep_checkpoints=3",
]


def _ray_results(exp: Path) -> dict[str, dict]:
    """Each trial's last result as Ray's JSON logger wrote it, by trial id."""
    out = {}
    for path in exp.glob("trial_*/result.json"):
        last = json.loads(path.read_text().splitlines()[-1])
        out[last["trial_id"]] = last
    return out


def test_trials_in_a_reused_worker_train_as_in_a_fresh_one(tmp_path, cli, records):
    """Four tiny trials one after another: they run in fewer worker processes than trials,
    and two trials that differ only in their evaluation set train identically (same losses
    at every evaluation) whether they ran first in a fresh process or later in a reused one.
    Ray's checkpoint folders hold a pointer, not a copy of the run checkpoint."""
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = "reuse"
    doc["base"].update({"train.lr": 1.0e-3, "train.epochs": 1})
    del doc["base"]["data.max_eval_examples"]
    doc["search"] = {"sampler": "grid", "scheduler": "none", "max_concurrent": 1}
    doc["parameters"] = {"data.max_eval_examples": {"type": "categorical", "choices": [24, 25]}}
    doc["seeds"] = [0, 1]
    space = tmp_path / "reuse.yaml"
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    cli(
        "sweep",
        str(space),
        "--storage-path",
        str(tmp_path),
        "--num-cpus",
        "1",
        "--no-report",
        timeout=900,
    )
    exp = tmp_path / "reuse"
    recs = records(exp)
    assert len(recs) == 4 and all(r["status"] == "finished" for r in recs.values()), recs
    results = _ray_results(exp)
    pids = {tid: results[tid]["pid"] for tid in recs}
    assert len(set(pids.values())) < len(pids), pids  # some trial ran in a reused process
    order = sorted(recs, key=lambda tid: recs[tid]["started_at"])
    first = order[0]
    assert any(pids[tid] == pids[first] for tid in order[1:]), pids  # the first one's worker

    def losses(tid: str) -> list[dict]:
        lines = (exp / "runs" / tid / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k.startswith("loss_")} for x in lines]

    by_seed: dict[int, list[str]] = {}
    for tid in order:
        by_seed.setdefault(recs[tid]["config"]["train.seed"], []).append(tid)
    assert sorted(len(v) for v in by_seed.values()) == [2, 2]
    for tids in by_seed.values():
        a, b = (losses(t) for t in tids)
        assert a == b and len(a) == 2, (tids, a, b)
    # the first trial's pair: one ran in a fresh process, the other in a reused one
    pair = next(tids for tids in by_seed.values() if first in tids)
    assert pair[0] == first and pids[pair[1]] == pids[first], (pair, pids)
    # Ray's checkpoints point to the run checkpoint: a few hundred bytes, not a copy
    ray_checkpoints = list(exp.glob("trial_*/checkpoint_*"))
    assert ray_checkpoints
    for folder in ray_checkpoints:
        assert [p.name for p in folder.iterdir()] == [worker_mod.RAY_POINTER], folder
    for tid in recs:  # every trial has its own run checkpoints and final summary
        summary = json.loads((exp / "runs" / tid / "summary.json").read_text())
        assert summary["final"] is True and summary["peak_mem_mb"] > 0
        assert find_checkpoint(exp / "runs" / tid).name == f"step-{summary['steps']:08d}"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """One tiny run with three sealed checkpoints (tests copy it)."""
    run = tmp_path_factory.mktemp("pointer") / "run"
    train_trial(load_trial_config(None, TINY), run)
    return run


def test_ray_checkpoint_points_to_the_run_checkpoint(tiny_run, tmp_path):
    run = Path(shutil.copytree(tiny_run, tmp_path / "run"))
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    assert len(ckpts) == 3
    ray_dir = tmp_path / "checkpoint_000001"
    ray_dir.mkdir()
    worker_mod.write_pointer(ray_dir, ckpts[1])
    assert [p.name for p in ray_dir.iterdir()] == [worker_mod.RAY_POINTER]
    where, note = worker_mod.resume_point(ray_dir, run)
    assert where == ckpts[1] and ckpts[1].name in note
    # the same tag written again (another attempt): not the checkpoint Ray was given
    manifest = ckpts[1] / "MANIFEST.json"
    manifest.write_text(manifest.read_text().replace('"step"', '"step" ', 1))
    where, note = worker_mod.resume_point(ray_dir, run)
    assert where == ckpts[2] and "not the one Ray was given" in note
    # pruned from the run folder: the newest intact one there
    shutil.rmtree(ckpts[1])
    where, note = worker_mod.resume_point(ray_dir, run)
    assert where == ckpts[2] and "no longer in the run folder" in note
    # a pointer naming anything but a checkpoint of this run folder is refused
    (ray_dir / worker_mod.RAY_POINTER).write_text(
        json.dumps({"format": 1, "checkpoint": "../../elsewhere", "manifest_sha256": "0"})
    )
    where, note = worker_mod.resume_point(ray_dir, run)
    assert where == ckpts[2] and "not a run checkpoint" in note
    # a full copy, as earlier versions reported, still stands for itself
    copy = Path(shutil.copytree(ckpts[0], tmp_path / "checkpoint_000000"))
    assert worker_mod.resume_point(copy, run)[0] == copy


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_peak_memory_counts_from_the_last_reset():
    """A reused worker reports each trial's own peak: after a reset, a large allocation of
    an earlier trial no longer counts."""
    reset_peak_memory()
    big = bytearray(400 * 2**20)
    big[::4096] = b"x" * len(big[::4096])  # touch every page
    high = peak_memory_mb()
    del big
    reset_peak_memory()
    low = peak_memory_mb()
    assert high - low > 300, (high, low)
