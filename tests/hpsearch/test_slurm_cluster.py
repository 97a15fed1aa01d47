"""`hpsearch slurm` against a real SLURM: a one-node cluster on this machine (munge, slurmctld,
slurmd, started and stopped by tests/slurm/slurm_cluster.sh), jobs submitted with sbatch.

    make test-slurm     # installs SLURM (Debian, as root), then runs this file

- A sweep job runs every trial of a tiny sweep on the job's Ray and writes the report.
- A second job is cancelled mid-sweep (`scancel --signal=USR1 --batch`, what SLURM's warning
  before the time limit does too), and a third job continues it with `hpsearch resume`: every
  trial ends finished, none lost, none run twice, the interrupted one from its checkpoint.
Skipped, with the reason, where SLURM is not installed or this is not root.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import psutil
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.timeout(3600)]

REPO = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "slurm_cluster.sh"
SMOKE = REPO / "search_spaces" / "smoke.yaml"
JOB_TIMEOUT_S = 1200  # a tiny sweep takes a minute or two; 2 shared cores can be slow


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> dict[str, str]:
    """A private one-node SLURM for the session; stopped at its end (every daemon it
    started, by process id). Yields the environment clients need (SLURM_CONF)."""
    missing = [c for c in ("slurmctld", "slurmd", "sbatch", "munged") if not shutil.which(c)]
    if missing:
        pytest.skip(
            f"SLURM is not installed ({', '.join(missing)} missing): `make test-slurm` "
            "installs it (tests/slurm/slurm_cluster.sh install: Debian's slurm-wlm and munge)"
        )
    if os.geteuid() != 0:
        pytest.skip("a private SLURM cluster needs root (SlurmUser=root): run as root")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "HPSEARCH_SLURM_DIR": str(state)}
    started = subprocess.run(
        [str(CLUSTER_SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=300
    )
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield {"SLURM_CONF": str(state / "slurm.conf")}
    finally:
        stopped = subprocess.run(
            [str(CLUSTER_SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=300
        )
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr


@pytest.fixture
def slurm_env(slurm_cluster, hpsearch_environ) -> dict[str, str]:
    """A test's child environment (its own Ray token) that reaches the cluster; sbatch hands
    it to the job."""
    return {**hpsearch_environ, **slurm_cluster}


def _space(tmp_path: Path, name: str, num_samples: int, max_concurrent: int, epochs: int) -> Path:
    """smoke.yaml with every trial run to its end (no ASHA) for a fixed number of epochs."""
    doc = yaml.safe_load(SMOKE.read_text())
    doc["name"] = name
    doc["search"].update(num_samples=num_samples, max_concurrent=max_concurrent, scheduler="none")
    doc["search"].pop("asha")
    doc["parameters"]["train.epochs"] = epochs
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _submit(env: dict[str, str], *args: str) -> str:
    """`hpsearch slurm ARGS --submit` on this machine's one node; the job id."""
    out = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "slurm", *args, "--cpus-per-node", "2"]
        + ["--time", "00:40:00", "--submit"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    match = re.search(r"^submitted batch job (\d+)$", out.stdout, re.MULTILINE)
    assert match, out.stdout
    return match.group(1)


def _job(job_id: str, env: dict[str, str]) -> dict[str, str]:
    """scontrol's fields of a job (kept MinJobAge=300 s after it ends)."""
    out = subprocess.run(
        ["scontrol", "show", "job", "-o", job_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def _wait_for_end(job_id: str, env: dict[str, str], log: Path) -> dict[str, str]:
    deadline = time.time() + JOB_TIMEOUT_S
    while time.time() < deadline:
        info = _job(job_id, env)
        if info.get("JobState") not in (None, "PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
            return info
        time.sleep(2)
    subprocess.run(["scancel", job_id], env=env, timeout=60)
    tail = log.read_text()[-4000:] if log.exists() else "(no output)"
    raise AssertionError(f"job {job_id} still running after {JOB_TIMEOUT_S} s:\n{tail}")


def _nothing_of_the_job_runs(job_id: str) -> None:
    """No process of the job is left (each has the job's SLURM_JOB_ID in its environment, or
    names the job's Ray folder, which is gone too)."""
    folder = f"/tmp/ray-hpsearch-{job_id}"
    deadline = time.time() + 30  # slurmstepd may still be reaping the last ones
    while True:
        left = []
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                ours = proc.environ().get("SLURM_JOB_ID") == job_id
            except (psutil.AccessDenied, psutil.NoSuchProcess, psutil.ZombieProcess):
                ours = False
            cmdline = " ".join(proc.info["cmdline"] or [])
            if ours or folder in cmdline:
                left.append(f"{proc.info['pid']}: {cmdline[:200]}")
        if not left or time.time() > deadline:
            break
        time.sleep(1)
    assert left == [], left
    assert not Path(folder).exists()


def test_a_sweep_job_runs_every_trial_and_writes_the_report(tmp_path, records, slurm_env):
    space = _space(tmp_path, "slurmjob", num_samples=3, max_concurrent=2, epochs=1)
    storage = tmp_path / "store"
    job_id = _submit(slurm_env, str(space), "--storage-path", str(storage))
    log = storage / f"slurmjob.slurm-{job_id}.out"
    info = _wait_for_end(job_id, slurm_env, log)
    output = log.read_text()
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), output[-4000:]
    exp = storage / "slurmjob"
    recs = records(exp)
    assert len(recs) == 3 and all(r["status"] == "finished" for r in recs.values()), recs
    assert (exp / "report" / "report.md").is_file() and (exp / "report" / "report.html").is_file()
    assert "hpsearch: Ray has all 1 node(s)" in output
    assert "hpsearch: every trial has ended; the report is in" in output
    assert "hpsearch: Ray stopped on every node" in output
    _nothing_of_the_job_runs(job_id)


@pytest.mark.parametrize("how", ["warning", "plain"])
def test_a_cancelled_job_is_continued_by_a_resume_job(tmp_path, records, slurm_env, how):
    """Job 2 is cancelled once one trial has finished and the next has a checkpoint; job 3
    (`hpsearch slurm --resume`) finishes the sweep: each trial once, none lost.

    warning: `scancel --signal=USR1 --batch`, the signal SLURM sends before the time limit:
        the driver stops as after Ctrl-C, Ray Tune saves every trial, and the interrupted one
        continues from its checkpoint.
    plain: `scancel`, SIGTERM to every process of the job at once: a hard stop, as of a
        killed driver; a trial that was just starting may be closed as abandoned and run
        anew in its place (docs/RELIABILITY.md), none is run twice.
    """
    space = _space(tmp_path, "cut", num_samples=4, max_concurrent=1, epochs=3)
    storage = tmp_path / "store"
    exp = storage / "cut"
    job_id = _submit(slurm_env, str(space), "--storage-path", str(storage), "--no-report")
    log = storage / f"cut.slurm-{job_id}.out"
    deadline = time.time() + JOB_TIMEOUT_S
    while True:
        recs = records(exp) if (exp / "trials").is_dir() else {}
        finished = [r for r in recs.values() if r["status"] == "finished"]
        running = [r for r in recs.values() if r["status"] == "running"]
        if (
            finished
            and running
            and any((exp / running[0]["trial_dir"] / "checkpoints").glob("step-*"))
        ):
            break
        state = _job(job_id, slurm_env).get("JobState")
        assert state in ("PENDING", "RUNNING", "CONFIGURING"), (state, log.read_text()[-4000:])
        assert time.time() < deadline, f"the sweep never got mid-run: {recs}"
        time.sleep(0.5)
    signal = ["--signal=USR1", "--batch"] if how == "warning" else []
    assert subprocess.run(["scancel", *signal, job_id], env=slurm_env, timeout=60).returncode == 0
    info = _wait_for_end(job_id, slurm_env, log)
    output = log.read_text()
    if how == "warning":
        assert "hpsearch: SIGUSR1 received: stopping the sweep" in output, output[-4000:]
        assert info["ExitCode"] == "130:0", (info, output[-4000:])  # the driver's Ctrl-C
        assert f"hpsearch slurm --resume {exp} --cpus-per-node 2 --time 00:40:00" in output
        assert "hpsearch: Ray stopped on every node" in output
    else:
        assert info["JobState"] == "CANCELLED", (info, output[-4000:])
    _nothing_of_the_job_runs(job_id)
    stopped = records(exp)
    before = {
        tid: (exp / r["trial_dir"] / "summary.json").read_text()
        for tid, r in stopped.items()
        if r["status"] == "finished"
    }
    interrupted = [tid for tid, r in stopped.items() if r["status"] == "running"]
    assert 1 <= len(before) < 4 and interrupted, stopped

    job_id = _submit(slurm_env, "--resume", str(exp))
    log = storage / f"cut.slurm-{job_id}.out"
    info = _wait_for_end(job_id, slurm_env, log)
    assert (info["JobState"], info["ExitCode"]) == ("COMPLETED", "0:0"), log.read_text()[-4000:]
    _nothing_of_the_job_runs(job_id)
    everything = records(exp)
    assert set(stopped) <= set(everything)  # no record of job 2 lost
    abandoned = {t for t, r in everything.items() if (r["reason"] or "").startswith("abandoned:")}
    assert how == "plain" or not abandoned, abandoned
    assert all(everything[t]["status"] == "failed" for t in abandoned)
    recs = {t: r for t, r in everything.items() if t not in abandoned}
    assert len(recs) == 4 and all(r["status"] == "finished" for r in recs.values()), recs
    assert len(list(exp.glob("trial_*"))) == len(everything)  # Ray Tune ran no other trial
    for tid, text in before.items():  # finished in job 2: untouched by job 3
        assert (exp / recs[tid]["trial_dir"] / "summary.json").read_text() == text
    for tid, rec in recs.items():  # each trial ended once
        lines = (exp / rec["trial_dir"] / "metrics.jsonl").read_text().splitlines()
        assert sum(json.loads(line).get("final", False) for line in lines) == 1, tid
    if how == "warning":
        for tid in interrupted:  # continued from its checkpoint, not from the start
            summary = json.loads((exp / recs[tid]["trial_dir"] / "summary.json").read_text())
            assert summary["resumed_from_step"] > 0, summary
    study = optuna.load_study(
        study_name="cut",
        storage=optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))
        ),
    )
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4, [t.state.name for t in study.trials]
