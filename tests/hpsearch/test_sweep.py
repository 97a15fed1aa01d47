"""Real sweeps: Ray Tune + Optuna + DeepSpeed on a tiny random-init model and synthetic data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def _space(tmp_path: Path, name: str, **changes) -> Path:
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = name
    for key, value in changes.items():
        section, _, leaf = key.partition("__")
        if leaf:
            doc.setdefault(section, {})[leaf] = value
        else:
            doc[section] = value
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_tpe_sweep_with_asha_every_parameter_kind(tmp_path, cli, records):
    space = _space(tmp_path, "tpe", search__num_samples=6)
    out = cli(
        "sweep", str(space), "--storage-path", str(tmp_path), "--num-cpus", "2", "--no-report"
    )
    exp = tmp_path / "tpe"
    recs = records(exp)
    assert len(recs) == 6, out.stdout[-2000:]
    statuses = [r["status"] for r in recs.values()]
    assert statuses.count("stopped") >= 1, statuses  # ASHA stopped at least one trial early
    assert statuses.count("finished") >= 1
    assert all(s in ("finished", "stopped") for s in statuses)
    stopped = next(r for r in recs.values() if r["status"] == "stopped")
    assert "ASHA" in stopped["reason"]
    # every finished trial's run folder holds its files; numbers trace back to them
    for rec in recs.values():
        run = exp / rec["trial_dir"]
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert lines, rec
        if rec["status"] == "finished":
            summary = json.loads((run / "summary.json").read_text())
            assert summary["final"] is True and summary["dev_overall"] == lines[-1]["dev_overall"]
    # the Optuna study, reopened with plain Optuna, shows every trial with its parameters
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))
    )
    study = optuna.load_study(study_name="tpe", storage=storage)
    assert len(study.trials) == 6
    kinds = {type(d).__name__ for t in study.trials for d in t.distributions.values()}
    assert {"FloatDistribution", "IntDistribution", "CategoricalDistribution"} <= kinds
    for t in study.trials:  # conditional parameter exists only when its toggle is on
        has = "extensions.sequential_sts_epochs" in t.params
        assert has == bool(t.params["extensions.sequential_sts"])
        assert 1e-4 <= t.params["train.lr"] <= 1e-2
    # configurations recorded per trial are the sampled ones
    by_number = {t.number: t for t in study.trials}
    assert {round(r["config"]["train.lr"], 12) for r in recs.values()} == {
        round(t.params["train.lr"], 12) for t in by_number.values()
    }
    # each trial in its real state: ASHA's stopped ones PRUNED with the evaluations they made,
    # finished ones COMPLETE with their final score; every evaluation an intermediate value
    by_ray_id = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    assert set(by_ray_id) == set(recs)
    for tid, rec in recs.items():
        trial = by_ray_id[tid]
        assert trial.params["train.lr"] == pytest.approx(rec["config"]["train.lr"])
        lines = (exp / rec["trial_dir"] / "metrics.jsonl").read_text().splitlines()
        curve = [json.loads(x)["dev_overall"] for x in lines][: rec["evaluations"]]
        assert trial.intermediate_values == pytest.approx(dict(enumerate(curve, start=1)))
        if rec["status"] == "finished":
            assert trial.state.name == "COMPLETE"
            summary = json.loads((exp / rec["trial_dir"] / "summary.json").read_text())
            assert trial.value == pytest.approx(summary["dev_overall"])
        else:
            assert trial.state.name == "PRUNED" and trial.value == pytest.approx(curve[-1])


def test_multi_objective_sweep_uses_nsga2(tmp_path, cli, records):
    space = _space(
        tmp_path,
        "moo",
        search__num_samples=3,
        search__scheduler="none",
        search__objectives=[
            {"metric": "dev_sts_r", "mode": "max"},
            {"metric": "dev_sst_acc", "mode": "max"},
        ],
    )
    doc = yaml.safe_load(space.read_text())
    doc["search"].pop("metric"), doc["search"].pop("mode"), doc["search"].pop("asha")
    doc["search"]["sampler"] = "nsga2"
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    cli("sweep", str(space), "--storage-path", str(tmp_path), "--num-cpus", "2", "--no-report")
    recs = records(tmp_path / "moo")
    assert len(recs) == 3 and all(r["status"] == "finished" for r in recs.values())
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "moo" / "optuna.journal"))
    )
    study = optuna.load_study(study_name="moo", storage=storage)
    assert len(study.directions) == 2
    assert all(len(t.values) == 2 for t in study.trials if t.state.name == "COMPLETE")


def test_existing_experiment_is_never_overwritten(tmp_path, cli):
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke" / "precious.txt").write_text("keep")
    proc = cli("sweep", "search_spaces/smoke.yaml", "--storage-path", str(tmp_path), check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "already exists" in proc.stderr
    assert (tmp_path / "smoke" / "precious.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke"]


@pytest.mark.slow
def test_two_deepspeed_workers_in_one_trial(tmp_path, cli, records):
    space = _space(
        tmp_path,
        "ddp",
        search__num_samples=1,
        search__scheduler="none",
        parameters={"train.lr": 1.0e-3},
    )
    doc = yaml.safe_load(space.read_text())
    doc["search"].pop("asha")
    doc["base"]["data.max_train_examples"] = 32
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    cli(
        "sweep",
        str(space),
        "--storage-path",
        str(tmp_path),
        "--num-cpus",
        "3",
        "--workers-per-trial",
        "2",
        "--no-report",
    )
    recs = records(tmp_path / "ddp")
    assert [r["status"] for r in recs.values()] == ["finished"]
    run = tmp_path / "ddp" / next(iter(recs.values()))["trial_dir"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    # data parallel: each rank takes half of the batches, so an epoch is half as many steps
    single = json.loads((run / "data_report.json").read_text())["sizes"]["train"]
    assert summary["steps"] < max(single.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray(*args: str, env: dict) -> None:
    ray = Path(sys.executable).parent / "ray"
    subprocess.run([str(ray), *args], env=env, check=True, capture_output=True, timeout=120)


@pytest.mark.slow
def test_two_node_cluster_on_loopback(tmp_path, cli, records, hpsearch_environ):
    """`ray start --head` plus a second `ray start --address`: trials land on both nodes.
    Token authentication on, as docs/CLUSTER.md tells a hand-made cluster: RAY_AUTH_MODE=token
    and the same token (here RAY_AUTH_TOKEN_PATH, this test's own) on every node; hpsearch
    joins with it."""
    port = _free_port()
    env = {**hpsearch_environ, "RAY_AUTH_MODE": "token"}
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--disable-usage-stats"]
    try:
        _ray("start", "--head", f"--port={port}", "--include-dashboard=false", *common, env=env)
        _ray(
            "start",
            f"--address=127.0.0.1:{port}",
            '--resources={"second_node": 1}',
            *common,
            env=env,
        )
        space = _space(tmp_path, "twonode", search__num_samples=4, search__scheduler="none")
        doc = yaml.safe_load(space.read_text())
        doc["search"].pop("asha")
        space.write_text(yaml.safe_dump(doc, sort_keys=False))
        cli(
            "sweep",
            str(space),
            "--storage-path",
            str(tmp_path),
            "--address",
            f"127.0.0.1:{port}",
            "--max-concurrent",
            "2",
            "--no-report",
        )
    finally:
        _ray("stop", "--force", env=env)
    recs = records(tmp_path / "twonode")
    assert len(recs) == 4 and all(r["status"] == "finished" for r in recs.values())
    nodes = set()
    for rec in recs.values():
        for line in (Path(rec["ray_trial_dir"]) / "result.json").read_text().splitlines():
            nodes.add(json.loads(line)["node_id"])
    assert len(nodes) == 2, nodes


@pytest.mark.slow
def test_driver_killed_mid_sweep_then_resumed(tmp_path, cli, records, hpsearch_environ):
    """SIGKILL the whole driver (Ray included) while trials run; `hpsearch resume` completes
    the sweep with every finished trial kept as it was and none run twice."""
    space = _space(
        tmp_path,
        "killed",
        search__num_samples=5,
        search__scheduler="none",
        search__max_concurrent=1,
    )
    doc = yaml.safe_load(space.read_text())
    doc["search"].pop("asha")
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    exp = tmp_path / "killed"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpsearch.cli",
            "sweep",
            str(space),
            "--storage-path",
            str(tmp_path),
            "--num-cpus",
            "2",
            "--no-report",
        ],
        cwd=REPO,
        env=hpsearch_environ,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 400
    try:
        while time.time() < deadline:
            recs = records(exp) if (exp / "trials").is_dir() else {}
            finished = [r for r in recs.values() if r["status"] == "finished"]
            running = [r for r in recs.values() if r["status"] == "running"]
            if finished and running and (exp / running[0]["trial_dir"] / "metrics.jsonl").exists():
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"sweep never reached mid-run: {records(exp)}")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    before = {
        tid: (exp / r["trial_dir"] / "summary.json").read_text()
        for tid, r in records(exp).items()
        if r["status"] == "finished"
    }
    cli("resume", str(exp), "--num-cpus", "2", "--no-report")
    # A trial started just before the kill may be missing from Ray's saved state: the resumed
    # sweep runs a new one in its place and closes the old record as abandoned (RELIABILITY.md).
    recs = {
        tid: r
        for tid, r in records(exp).items()
        if not (r["status"] == "failed" and r["reason"].startswith("abandoned:"))
    }
    assert len(recs) == 5, recs
    assert all(r["status"] == "finished" for r in recs.values())
    for tid, text in before.items():  # finished trials untouched, not run again
        assert (exp / recs[tid]["trial_dir"] / "summary.json").read_text() == text
        lines = (exp / recs[tid]["trial_dir"] / "metrics.jsonl").read_text().splitlines()
        assert sum(json.loads(x).get("final", False) for x in lines) == 1
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))
    )
    study = optuna.load_study(study_name="killed", storage=storage)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 5


@pytest.mark.slow
def test_warm_start_seeds_a_new_study_with_earlier_trials(tmp_path, cli, records):
    first = _space(tmp_path, "first", search__num_samples=2, search__scheduler="none")
    doc = yaml.safe_load(first.read_text())
    doc["search"].pop("asha")
    first.write_text(yaml.safe_dump(doc, sort_keys=False))
    cli("sweep", str(first), "--storage-path", str(tmp_path), "--num-cpus", "2", "--no-report")
    doc["name"] = "second"
    second = tmp_path / "second.yaml"
    second.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = cli(
        "sweep",
        str(second),
        "--storage-path",
        str(tmp_path),
        "--num-cpus",
        "2",
        "--warm-start",
        str(tmp_path / "first"),
        "--no-report",
    )
    assert "warm start: 2 finished trials" in out.stdout
    assert len(records(tmp_path / "second")) == 2  # earlier trials do not count as new ones
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "second" / "optuna.journal"))
    )
    study = optuna.load_study(study_name="second", storage=storage)
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 4


def test_warm_start_from_a_folder_that_is_not_an_experiment(tmp_path, cli):
    proc = cli(
        "sweep",
        "search_spaces/smoke.yaml",
        "--storage-path",
        str(tmp_path / "r"),
        "--warm-start",
        str(tmp_path),
        check=False,
    )
    assert proc.returncode == 2 and "--warm-start" in proc.stderr
    assert not (tmp_path / "r").exists()
