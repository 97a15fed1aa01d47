"""A sweep survives faults and loses nothing (docs/RELIABILITY.md has the table of figures).

Default tests (about a minute and a half): checkpoint truncation, where a restarted
trial resumes from, atomic JSON and report writes, the metrics file of a restarted run,
abandoned trials, and the report of a crashed experiment; and two real kills on one-epoch
tiny trials: a trial's worker SIGKILLed (Ray retries it from its checkpoint), and the sweep
driver SIGKILLed, then `hpsearch resume`.

Slow tests (`pytest -m slow`, minutes each): `hpsearch train` SIGKILLed while writing a
checkpoint, then resumed; real sweeps through `python -m hpsearch.cli` with faults injected
through HPSEARCH_FAULT (trainables/minbert/faults.py): trials that raise, diverge, get
SIGKILLed or run past their time limit; the driver SIGKILLed during a trial's start, while a
checkpoint is half written and during the report, then resumed; and 50 short trials, two at a
time, with flat memory.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from hpsearch import experiment as experiment_mod
from hpsearch import worker as worker_mod
from hpsearch.settings import SweepSettings
from hpsearch.space_parser import load_search_space
from trainables.atomic import write_json_atomic
from trainables.errors import ConfigError
from trainables.minbert.callbacks import MetricsFileWriter
from trainables.minbert.config import load_trial_config
from trainables.minbert.run_checkpoint import find_checkpoint, verify_checkpoint
from trainables.minbert.trainer import train_trial

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "trainables" / "configs" / "tiny.yaml"
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


# ============================================================================ storage faults
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """One tiny run with three sealed checkpoints (never modified: tests copy it)."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    train_trial(load_trial_config(None, TINY), run)
    assert len(list((run / "checkpoints").glob("step-*"))) == 3
    return run


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _model_file(ckpt: Path) -> Path:
    return next(p for p in ckpt.rglob("*.pt") if p.name != "trainer_state.pt")


def test_restarted_trial_resumes_from_the_newest_intact_checkpoint(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    ray_copy = Path(shutil.copytree(ckpts[-1], tmp_path / "checkpoint_000002"))
    # Ray's checkpoint intact: it is used
    assert worker_mod.resume_point(ray_copy, run)[0] == ray_copy
    # Ray's copy corrupt: refused, the run folder's newest intact checkpoint is used
    _truncate(_model_file(ray_copy))
    where, note = worker_mod.resume_point(ray_copy, run)
    assert where == ckpts[-1] and "corrupt (checksum mismatch)" in note
    # the newest local one truncated as well: the one before it
    _truncate(_model_file(ckpts[-1]))
    assert worker_mod.resume_point(ray_copy, run)[0] == ckpts[-2]
    # a checkpoint whose manifest never got written (crash mid-save) is not a checkpoint
    (ckpts[-2] / "MANIFEST.json").unlink()
    assert worker_mod.resume_point(None, run)[0] == ckpts[-3]
    # nothing intact anywhere: start over, and say so
    _truncate(ckpts[-3] / "trainer_state.pt")
    where, note = worker_mod.resume_point(ray_copy, run)
    assert where is None and "starting from the beginning" in note


def test_truncated_newest_checkpoint_training_continues_from_the_previous(trained_run, tmp_path):
    run = _copy(trained_run, tmp_path)
    ckpts = sorted((run / "checkpoints").glob("step-*"))
    _truncate(_model_file(ckpts[-1]))
    assert "checksum mismatch" in verify_checkpoint(ckpts[-1])
    previous_step = json.loads((ckpts[-2] / "MANIFEST.json").read_text())["step"]
    summary = train_trial(load_trial_config(None, TINY), run, resume_from=run)
    assert summary["resumed_from_step"] == previous_step
    final_step = json.loads((trained_run / "summary.json").read_text())["steps"]
    assert summary["steps"] == final_step
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)), steps  # evaluations redone replace, never repeat


def _hpsearch(args: list[str], cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    """Start `hpsearch ARGS` in its own process group (so that it can be SIGKILLed whole);
    its output goes to `log` (a pipe could fill up and stall it)."""
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hpsearch.cli", *args],
            cwd=cwd,
            env=env,
            start_new_session=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = predicate()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"process ended (exit {proc.returncode}) before {what}:\n"
                f"{proc.log.read_text()[-4000:]}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _env(base: dict[str, str], **extra: str) -> dict[str, str]:
    """A child's environment: `base` (the `child_environ` fixture of tests/conftest.py: no
    fault hook, rendezvous variables or Ray auth settings of this process, a Ray token of the
    test's own), unbuffered, plus `extra`."""
    return {**base, "PYTHONUNBUFFERED": "1", **extra}


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_then_resumed(tmp_path, child_environ):
    """SIGKILL `hpsearch train` in the middle of writing its second checkpoint: the half
    checkpoint is never taken for one, and --resume continues from the first."""
    out = tmp_path / "run"
    proc = _hpsearch(
        ["train", str(TINY_YAML), "--out", str(out)],
        tmp_path,
        _env(child_environ, HPSEARCH_FAULT="sleep_in_checkpoint:300@step=8"),
        tmp_path / "log",
    )
    try:
        _wait_for(
            lambda: (out / ".fault-sleep_in_checkpoint").exists(),
            300,
            "the checkpoint of step 8",
            proc,
        )
    finally:
        _kill(proc)
    root = out / "checkpoints"
    staged = list(root.glob(".staging-step-00000008/step-00000008/*"))
    assert staged, "the half-written checkpoint should be on disk"
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000004"]
    assert find_checkpoint(out).name == "step-00000004"
    assert not (out / "summary.json").exists()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpsearch.cli",
            "train",
            str(TINY_YAML),
            "--out",
            str(out),
            "--resume",
        ],
        cwd=tmp_path,
        env=_env(child_environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["resumed_from_step"] == 4
    assert summary["steps"] == 8
    assert not list(root.glob(".staging-*")), "stale staging folders are cleared"
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8]


def test_json_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"status": "finished", "dev_overall": 0.5})
    before = path.read_text()

    class Unserialisable:
        def item(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_json_atomic(path, {"status": "finished", "x": Unserialisable()})
    real_replace = os.replace

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_json_atomic(path, {"status": "other"})
    monkeypatch.setattr(os, "replace", real_replace)
    assert path.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]  # no temp left


def test_report_files_are_written_atomically(tmp_path, monkeypatch):
    from reports.render import atomic_write

    path = tmp_path / "report.md"
    atomic_write(path, "# complete report\n")

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        atomic_write(path, "# half")
    monkeypatch.undo()
    assert path.read_text() == "# complete report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_restarted_run_cuts_metrics_back_to_its_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "dev_overall": s / 10}) for s in (2, 4, 6)]
    path.write_text("\n".join(lines) + '\n{"step": 8, "dev_ov')  # killed mid-line

    class Trainer:
        step = 4

    MetricsFileWriter(tmp_path).on_train_start(Trainer())
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [2, 4]
    Trainer.step = 0  # a restart from scratch keeps nothing
    MetricsFileWriter(tmp_path).on_train_start(Trainer())
    assert path.read_text() == ""


def test_a_trial_that_already_ended_is_never_trained_again(tmp_path):
    assert worker_mod.finished_summary(tmp_path) is None
    write_json_atomic(
        tmp_path / "summary.json", {"status": "finished", "final": True, "dev_overall": 0.5}
    )
    assert worker_mod.finished_summary(tmp_path)["dev_overall"] == 0.5
    write_json_atomic(
        tmp_path / "summary.json", {"status": "failed", "reason": "non-finite loss at step 3"}
    )
    assert worker_mod.finished_summary(tmp_path)["reason"] == "non-finite loss at step 3"
    (tmp_path / "summary.json").write_text('{"status": "finished", "fin')  # corrupt
    assert worker_mod.finished_summary(tmp_path) is None


def test_trials_abandoned_by_a_killed_driver_are_closed(tmp_path):
    """After a resumed sweep ends, a record Ray never heard of that still says "running"
    becomes failed (abandoned), and Optuna trials left RUNNING become FAIL."""
    exp = tmp_path / "exp"
    (exp / "trials").mkdir(parents=True)
    write_json_atomic(exp / "experiment.json", {"study_name": "exp"})
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))
    )
    study = optuna.create_study(study_name="exp", storage=storage, direction="maximize")
    done, orphan = study.ask(), study.ask()
    study.tell(done, 0.5)
    for tid, status in (("known1", "finished"), ("lost1", "running"), ("known2", "running")):
        write_json_atomic(
            exp / "trials" / f"{tid}.json", {"trial_id": tid, "status": status, "reason": None}
        )
    assert experiment_mod.reconcile_after_fit(exp, {"known1", "known2"}) == ["lost1"]
    lost = json.loads((exp / "trials" / "lost1.json").read_text())
    assert lost["status"] == "failed" and lost["reason"] == experiment_mod.ABANDONED
    assert json.loads((exp / "trials" / "known2.json").read_text())["status"] == "running"
    states = {
        t.number: t.state.name for t in optuna.load_study(study_name="exp", storage=storage).trials
    }
    assert states == {done.number: "COMPLETE", orphan.number: "FAIL"}


def test_existing_experiment_gets_a_new_name_when_asked(tmp_path, capsys):
    space = load_search_space(REPO / "search_spaces" / "smoke.yaml")
    (tmp_path / "smoke").mkdir()
    (tmp_path / "smoke-2").mkdir()
    settings = SweepSettings(storage_path=str(tmp_path))
    with pytest.raises(ConfigError, match="already exists: pass another --name"):
        experiment_mod.new_experiment_dir(settings, space.name)
    settings.exist_ok_suffix = True
    assert experiment_mod.new_experiment_dir(settings, space.name) == tmp_path / "smoke-3"
    assert "writing to" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["smoke", "smoke-2"]


def _crashed_experiment(exp: Path) -> None:
    """An experiment folder as a crash leaves it: a finished trial, a failed one with a
    better score, a trial record cut short, and a trial still "running" whose metrics end in
    a half-written line."""
    (exp / "trials").mkdir(parents=True)
    write_json_atomic(
        exp / "experiment.json",
        {"name": exp.name, "metric": "dev_overall", "mode": "max", "total_trials": 4},
    )

    def trial(
        tid: str,
        status: str,
        reason: str | None,
        seed: int,
        dev: list[float],
        summary: dict | None,
        tail: str = "",
    ) -> None:
        run = exp / "runs" / tid
        run.mkdir(parents=True)
        metrics = [
            json.dumps(
                {
                    "step": 2 * (i + 1),
                    "epoch": 0.5 * (i + 1),
                    "time_s": i,
                    "dev_sst_acc": d,
                    "dev_para_acc": d,
                    "dev_sts_r": 2 * d - 1,
                    "dev_overall": d,
                }
            )
            for i, d in enumerate(dev)
        ]
        (run / "metrics.jsonl").write_text("\n".join(metrics) + "\n" + tail)
        if summary is not None:
            write_json_atomic(run / "summary.json", summary)
        write_json_atomic(
            exp / "trials" / f"{tid}.json",
            {
                "trial_id": tid,
                "status": status,
                "reason": reason,
                "trial_dir": f"runs/{tid}",
                "variant": "baseline",
                "config": {"train.seed": seed, "train.lr": 1e-3},
                "searched": ["train.lr"],
            },
        )

    good = {
        "status": "finished",
        "final": True,
        "steps": 4,
        **{
            f"{s}_{m}": v
            for s in ("dev", "train", "test")
            for m, v in (("sst_acc", 0.5), ("para_acc", 0.5), ("sts_r", 0.0), ("overall", 0.5))
        },
    }
    trial("aaaa0001", "finished", None, 0, [0.4, 0.5], good)
    trial(
        "aaaa0002",
        "failed",
        "non-finite loss at step 5 (task sts: nan)",
        1,
        [0.9, 0.95],
        {"status": "failed", "reason": "non-finite loss at step 5 (task sts: nan)"},
    )
    trial("aaaa0004", "running", None, 3, [0.97], None, tail='{"step": 4, "dev_ov')
    (exp / "trials" / "aaaa0003.json").write_text('{"trial_id": "aaaa0003", "stat')


def test_report_of_a_crashed_experiment_lists_every_trial_and_ranks_only_sound_ones(
    tmp_path, child_environ
):
    exp = tmp_path / "crashed"
    _crashed_experiment(exp)
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "report", str(exp)],
        cwd=tmp_path,
        env=_env(child_environ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pandas as pd

    status = pd.read_csv(exp / "report" / "trial_status.csv").set_index("trial_id")
    assert dict(status["status"]) == {
        "aaaa0001": "finished",
        "aaaa0002": "failed",
        "aaaa0003": "corrupt",
        "aaaa0004": "running",
    }
    assert status.loc["aaaa0002", "reason"] == "non-finite loss at step 5 (task sts: nan)"
    report = (exp / "report" / "report.md").read_text()
    assert "Best dev_overall: 0.500 (trial aaaa0001" in report  # not the failed 0.95
    assert not [p for p in (exp / "report").rglob(".*")], "no temporary files left behind"
    assert experiment_mod.trial_status_counts(exp) == {
        "corrupt": 1,
        "failed": 1,
        "finished": 1,
        "running": 1,
    }


# ============================================================================ real sweeps (slow)
def _grid_space(tmp_path: Path, name: str, seeds: list[int], **base: object) -> Path:
    """A grid over seeds: trial k has train.seed seeds[k], so faults target trials by seed."""
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = name
    doc["base"].update({"train.lr": 1.0e-3, **base})
    doc["search"] = {"sampler": "grid", "scheduler": "none", "max_concurrent": 2}
    doc["parameters"] = {"train.epochs": {"type": "categorical", "choices": [1]}}
    doc["seeds"] = seeds
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _records(exp: Path) -> dict[int, dict]:
    """Trial records by train.seed."""
    out = {}
    for path in (exp / "trials").glob("*.json"):
        rec = json.loads(path.read_text())
        out[rec["config"]["train.seed"]] = rec
    return out


def _finals(exp: Path, rec: dict) -> int:
    path = exp / rec["trial_dir"] / "metrics.jsonl"
    return sum(bool(json.loads(x).get("final")) for x in path.read_text().splitlines())


def _study(exp: Path) -> optuna.Study:
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))
    )
    return optuna.load_study(study_name=exp.name, storage=storage)


@pytest.mark.slow
def test_trial_faults_fail_alone_and_the_sweep_completes(tmp_path, cli, child_environ):
    """One sweep, seven trials: a NaN loss, an exception, a worker SIGKILLed once (retried
    from its checkpoint), a worker SIGKILLed every time, a trial past its time limit, and
    two healthy ones. Every fault ends in its trial alone, with its reason in the report."""
    space = _grid_space(tmp_path, "faults", [0, 1, 2, 3, 4, 5, 6])
    faults = (
        "nan_at_step:3@seed=1;raise_at_step:3@seed=2;kill_once_at_step:6@seed=3;"
        "kill_at_step:6@seed=4;sleep_per_step:8@seed=5"
    )
    proc = subprocess.run(
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
            "--max-failures",
            "1",
            "--time-limit-per-trial",
            "45",
        ],
        cwd=REPO,
        env=_env(child_environ, HPSEARCH_FAULT=faults),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    exp = tmp_path / "faults"
    recs = _records(exp)
    assert sorted(recs) == [0, 1, 2, 3, 4, 5, 6]
    status = {seed: rec["status"] for seed, rec in recs.items()}
    assert status == {
        0: "finished",
        1: "failed",
        2: "failed",
        3: "finished",
        4: "failed",
        5: "failed",
        6: "finished",
    }
    assert recs[1]["reason"].startswith("non-finite loss at step 3")
    assert "InjectedFault: injected fault: raise_at_step 3" in recs[2]["reason"]
    assert "retries exhausted (--max-failures 1)" in recs[2]["reason"]
    assert "worker process died" in recs[4]["reason"] and recs[4]["failures"] == 2
    assert recs[5]["reason"].startswith("time limit of 45 s reached at step")
    # the SIGKILLed-once trial was retried from its step-4 checkpoint and went on to step 8
    assert recs[3]["failures"] == 1
    summary3 = json.loads((exp / recs[3]["trial_dir"] / "summary.json").read_text())
    assert summary3["resumed_from_step"] == 4 and summary3["steps"] == 8
    steps = [
        json.loads(x)["step"]
        for x in (exp / recs[3]["trial_dir"] / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [4, 8]
    for seed in (0, 3, 6):
        assert _finals(exp, recs[seed]) == 1
    # failed trials are failed in the Optuna study too: never ranked, never left RUNNING
    states = {t.params["grid_point"]: t.state.name for t in _study(exp).trials}
    assert states == {
        0: "COMPLETE",
        1: "FAIL",
        2: "FAIL",
        3: "COMPLETE",
        4: "FAIL",
        5: "FAIL",
        6: "COMPLETE",
    }
    # the report lists every failure with its reason; the best trial is a finished one
    import pandas as pd

    table = pd.read_csv(exp / "report" / "trial_status.csv").set_index("trial_id")
    for seed in (1, 2, 4, 5):
        tid = recs[seed]["trial_id"]
        assert table.loc[tid, "status"] == "failed"
        assert table.loc[tid, "reason"] == recs[seed]["reason"]
    best = yaml.safe_load((exp / "report" / "best_config.yaml").read_text())
    assert best["train"]["seed"] in (0, 3, 6)


def _start_sweep(space: Path, storage: Path, fault: str, base: dict[str, str]) -> subprocess.Popen:
    return _hpsearch(
        [
            "sweep",
            str(space),
            "--storage-path",
            str(storage),
            "--num-cpus",
            "2",
            "--max-concurrent",
            "1",
        ],
        REPO,
        _env(base, HPSEARCH_FAULT=fault),
        storage / "driver.log",
    )


def _marker(exp: Path, name: str):
    def find():
        hits = list((exp / "runs").glob(f"*/{name}")) if (exp / "runs").is_dir() else []
        return hits[0] if hits else None

    return find


def _snapshot_finished(exp: Path) -> dict[str, str]:
    return {
        rec["trial_id"]: (exp / rec["trial_dir"] / "summary.json").read_text()
        for rec in _records(exp).values()
        if rec["status"] == "finished"
    }


def _check_resumed(exp: Path, before: dict[str, str], n: int) -> dict[int, dict]:
    """n trials finished, the ones finished before the kill untouched, none run twice.

    A trial the driver had just started when it was killed may be unknown to Ray's saved
    state; the resumed sweep then runs a new trial in its place, and the old record is
    closed as failed ("abandoned") without ever having produced a result.
    """
    recs, abandoned = {}, []
    for path in (exp / "trials").glob("*.json"):
        rec = json.loads(path.read_text())
        if rec["status"] == "failed" and rec["reason"] == experiment_mod.ABANDONED:
            assert not (exp / rec["trial_dir"] / "summary.json").exists()
            abandoned.append(rec)
            continue
        assert rec["status"] == "finished", rec
        seed = rec["config"]["train.seed"]
        assert seed not in recs, f"seed {seed} finished twice"
        recs[seed] = rec
    assert len(recs) == n, recs
    assert len(abandoned) <= 1
    for rec in recs.values():
        assert _finals(exp, rec) == 1, rec
    by_id = {r["trial_id"]: r for r in recs.values()}
    for tid, text in before.items():
        assert (exp / by_id[tid]["trial_dir"] / "summary.json").read_text() == text
    states = [t.state.name for t in _study(exp).trials]
    assert states.count("COMPLETE") == n and states.count("RUNNING") == 0, states
    return recs


@pytest.mark.slow
def test_driver_killed_during_trial_start_then_resumed(tmp_path, cli, child_environ):
    space = _grid_space(tmp_path, "killstart", [0, 1, 2])
    exp = tmp_path / "killstart"
    proc = _start_sweep(space, tmp_path, "sleep_in_setup:300@seed=1", child_environ)
    try:
        _wait_for(_marker(exp, ".fault-sleep_in_setup"), 600, "trial 2 starting", proc)
    finally:
        _kill(proc)
    before = _snapshot_finished(exp)
    assert len(before) == 1
    cli("resume", str(exp), "--num-cpus", "2", "--no-report")
    _check_resumed(exp, before, 3)


@pytest.mark.slow
def test_driver_killed_while_a_checkpoint_is_written_then_resumed(tmp_path, cli, child_environ):
    space = _grid_space(tmp_path, "killckpt", [0, 1, 2])
    exp = tmp_path / "killckpt"
    proc = _start_sweep(space, tmp_path, "sleep_in_checkpoint:300@seed=1,step=8", child_environ)
    try:
        _wait_for(_marker(exp, ".fault-sleep_in_checkpoint"), 600, "a checkpoint write", proc)
    finally:
        _kill(proc)
    before = _snapshot_finished(exp)
    half = next((exp / "runs").glob("*/checkpoints/.staging-step-00000008"))
    assert list(half.rglob("*.pt")), "the killed checkpoint was half written"
    cli("resume", str(exp), "--num-cpus", "2", "--no-report")
    recs = _check_resumed(exp, before, 3)
    summary = json.loads((exp / recs[1]["trial_dir"] / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8
    assert not list((exp / "runs").glob("*/checkpoints/.staging-*"))


@pytest.mark.slow
def test_driver_killed_during_the_report_then_resumed(tmp_path, cli, child_environ):
    space = _grid_space(tmp_path, "killreport", [0, 1])
    exp = tmp_path / "killreport"
    proc = _start_sweep(space, tmp_path, "sleep_in_report:300", child_environ)
    try:
        _wait_for(lambda: (exp / ".fault-sleep_in_report").exists(), 600, "the report", proc)
    finally:
        _kill(proc)
    before = _snapshot_finished(exp)
    assert len(before) == 2
    assert not (exp / "report" / "report.md").exists()
    out = cli("resume", str(exp), "--num-cpus", "2")
    _check_resumed(exp, before, 2)
    assert "2 finished" in out.stdout
    assert (exp / "report" / "report.md").read_text().count("finished") >= 1
    assert not [p for p in (exp / "report").rglob(".*")]


@pytest.mark.slow
def test_fifty_short_trials_all_accounted_for_and_memory_flat(tmp_path, cli):
    n = 50
    space = _grid_space(
        tmp_path,
        "load",
        list(range(n)),
        **{
            "data.max_train_examples": 16,
            "data.max_eval_examples": 16,
            "data.train_eval_examples": 8,
            "train.max_steps": 2,
            "train.evals_per_epoch": 1,
        },
    )
    cli(
        "sweep",
        str(space),
        "--storage-path",
        str(tmp_path),
        "--num-cpus",
        "2",
        "--max-concurrent",
        "2",
        "--no-report",
        timeout=3000,
    )
    exp = tmp_path / "load"
    recs = _records(exp)
    assert sorted(recs) == list(range(n))
    assert all(r["status"] == "finished" for r in recs.values())
    files = sorted(
        (exp / r["trial_dir"] / "summary.json" for r in recs.values()),
        key=lambda p: p.stat().st_mtime,
    )  # in the order the trials finished
    peaks = [json.loads(p.read_text())["peak_mem_mb"] for p in files]
    first, last = sum(peaks[:5]) / 5, sum(peaks[-5:]) / 5
    print(
        f"peak memory per trial: first 5 {first:.0f} MB, last 5 {last:.0f} MB, "
        f"max {max(peaks):.0f} MB over {n} trials"
    )
    assert last <= first * 1.10 + 20, (first, last, peaks)
    assert sum(t.state.name == "COMPLETE" for t in _study(exp).trials) == n


# ============================================================================ real kills (default)
# One real worker SIGKILL and one real driver SIGKILL + `hpsearch resume`, on one-epoch tiny
# trials, in the default suite (the slow tests above cover the other kill points). Every Ray
# these start lives under its own short RAY_TMPDIR (Ray's socket paths must stay under 108
# bytes), so that the processes of this test's Ray, and only those, can be found and killed
# at the end: `ray stop` would stop every other Ray on the machine too.
# RaySession and the ray_session fixture: tests/hpsearch/conftest.py.


def _sweep_args(space: Path, storage: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        str(space),
        "--storage-path",
        str(storage),
        "--num-cpus",
        "2",
        "--no-report",
        *extra,
    ]


def test_worker_sigkilled_mid_trial_is_retried_from_its_checkpoint(tmp_path, ray_session):
    """The trial's worker process is SIGKILLed at step 6 (kill_once_at_step): Ray restarts it
    from its step-4 checkpoint, the trial finishes with 8 steps, and its record says it was
    retried once."""
    space = _grid_space(tmp_path, "workerkill", [0])
    exp = tmp_path / "workerkill"
    ray_session.run(
        _sweep_args(space, tmp_path, "--max-failures", "1"),
        tmp_path / "sweep.log",
        timeout=600,
        HPSEARCH_FAULT="kill_once_at_step:6@seed=0",
    )
    rec = _records(exp)[0]
    assert rec["status"] == "finished" and rec["failures"] == 1, rec
    run = exp / rec["trial_dir"]
    assert (run / ".fault-kill_once_at_step").exists(), "the worker was never killed"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 8, summary
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 8]  # the evaluation of step 4 once, though step 4 was trained twice
    assert _finals(exp, rec) == 1
    assert [t.state.name for t in _study(exp).trials] == ["COMPLETE"]


def test_driver_sigkilled_during_a_trial_then_resumed(tmp_path, ray_session):
    """SIGKILL the `hpsearch sweep` process alone (not its process group) once
    one trial has finished while the other is held in its start; `hpsearch resume` then
    finishes both trials, the first one untouched, none run twice."""
    space = _grid_space(tmp_path, "driverkill", [0, 1])
    exp = tmp_path / "driverkill"
    driver = ray_session.start(
        _sweep_args(space, tmp_path, "--max-concurrent", "2"),
        tmp_path / "sweep.log",
        HPSEARCH_FAULT="sleep_in_setup:300@seed=1",
    )
    held = _marker(exp, ".fault-sleep_in_setup")
    _wait_for(
        lambda: held() and _snapshot_finished(exp), 600, "trial 0 done, trial 1 held", driver
    )
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    # Ray's head processes die with their driver (Linux fate-sharing, PR_SET_PDEATHSIG) and
    # its workers with the raylet; whatever is still dying or was left holds the 2 CPUs.
    ray_session.kill_all()
    before = _snapshot_finished(exp)
    assert len(before) == 1, _records(exp)
    out = ray_session.run(
        ["resume", str(exp), "--num-cpus", "2", "--no-report"], tmp_path / "resume.log", 600
    )
    _check_resumed(exp, before, 2)
    assert "2 finished" in out, out[-3000:]


# ============================================================================ study states
# The Optuna study holds each trial's real state (hpsearch.searcher): a trial ASHA stopped is
# PRUNED with its intermediate values, a finished one COMPLETE, a failed one FAIL, before a
# driver kill and after `hpsearch resume`. Two variants over seeds 0 and 1, one trial at a
# time: "slow" (lr 1e-6, its dev_overall stays at the initial model's, about 0.40) and "fast"
# (lr 3e-3, about 0.34 at its second evaluation on the tiny model and synthetic data); seed 1
# diverges (a NaN loss at step 6, after its first evaluation). ASHA's first rung is the second
# evaluation, so "fast" seed 0 is stopped there when "slow" seed 0 ran before it. The grid's
# order is the sampler's, fixed by search.seed: the test picks a seed for which slow-0 runs
# first and fast-0 is not last, so the driver can be killed while a later trial runs.
STATE_OF = {"finished": "COMPLETE", "stopped": "PRUNED", "failed": "FAIL"}


def _states_space(tmp_path: Path, name: str) -> Path:
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = name
    doc["base"]["train.epochs"] = 2  # evaluations at steps 4, 8, 12 and 16 (the final one)
    doc["parameters"] = {}
    doc["variants"] = {"slow": {"train.lr": 1.0e-6}, "fast": {"train.lr": 3.0e-3}}
    doc["seeds"] = [0, 1]
    doc["search"] = {"sampler": "grid", "scheduler": "asha", "max_concurrent": 1,
                     "asha": {"grace_period": 2, "reduction_factor": 2}}  # fmt: skip
    for seed in range(100):
        doc["search"]["seed"] = seed
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        space = load_search_space(path)
        study = optuna.create_study(sampler=space.optuna_sampler(), direction="maximize")
        order = []
        for _ in range(4):  # one at a time, as under max_concurrent 1
            trial = study.ask()
            config = space.define_by_run(trial)
            order.append((config["variant"], config["train.seed"]))
            study.tell(trial, 0.0)
        if order.index(("slow", 0)) < order.index(("fast", 0)) < 3:
            return path
    raise AssertionError("no search.seed in 0-99 runs slow-0 before fast-0")


def _by_trial_id(exp: Path) -> dict[str, dict]:
    paths = sorted((exp / "trials").glob("*.json")) if (exp / "trials").is_dir() else []
    return {p.stem: json.loads(p.read_text()) for p in paths}


def _records_by_point(exp: Path) -> dict[tuple[str, int], dict]:
    """Trial records by (variant, seed), leaving out those closed as abandoned."""
    out = {}
    for rec in _by_trial_id(exp).values():
        if rec["status"] == "failed" and rec["reason"] == experiment_mod.ABANDONED:
            continue
        out[(rec["variant"], rec["config"]["train.seed"])] = rec
    return out


def _check_study_states(exp: Path, recs: dict[tuple[str, int], dict]) -> dict[str, dict]:
    """Each record's Optuna trial (found by its user attribute ray_trial_id) in the state its
    record says, with one intermediate value per evaluation (step 1, 2, ...; the value the
    trial wrote to metrics.jsonl) and, when finished, its final value."""
    trials = {t.user_attrs["ray_trial_id"]: t for t in _study(exp).trials}
    seen = {}
    for rec in recs.values():
        trial = trials[rec["trial_id"]]
        assert trial.state.name == STATE_OF[rec["status"]], (rec, trial)
        lines = (exp / rec["trial_dir"] / "metrics.jsonl").read_text().splitlines()
        curve = [json.loads(x)["dev_overall"] for x in lines]
        n = len(trial.intermediate_values)
        assert list(trial.intermediate_values) == list(range(1, n + 1)), trial
        assert list(trial.intermediate_values.values()) == pytest.approx(curve[:n])
        if rec["status"] == "finished":
            summary = json.loads((exp / rec["trial_dir"] / "summary.json").read_text())
            assert n == len(curve) == rec["evaluations"]
            assert trial.value == pytest.approx(summary["dev_overall"])
        elif rec["status"] == "stopped":  # ASHA's evaluation is the last intermediate value
            assert n == rec["evaluations"] >= 1
            assert trial.value == pytest.approx(curve[n - 1])
        else:
            assert trial.value is None
        seen[rec["trial_id"]] = {
            "state": trial.state.name,
            "value": trial.value,
            "intermediate": dict(trial.intermediate_values),
        }
    return seen


def test_study_states_after_a_driver_kill_and_resume(tmp_path, ray_session):
    space = _states_space(tmp_path, "states")
    exp = tmp_path / "states"
    nan = "nan_at_step:6@seed=1"
    driver = ray_session.start(_sweep_args(space, tmp_path), tmp_path / "sweep.log",
                               HPSEARCH_FAULT=nan)  # fmt: skip

    def slow_and_fast_ended_and_a_later_trial_started() -> bool:
        recs = _by_trial_id(exp)
        points = {(r["variant"], r["config"]["train.seed"]): r["status"] for r in recs.values()}
        ended = points.get(("slow", 0)) in STATE_OF and points.get(("fast", 0)) in STATE_OF
        return ended and len(points) >= 3

    _wait_for(slow_and_fast_ended_and_a_later_trial_started, 900, "slow-0 and fast-0", driver)
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    ray_session.kill_all()
    before = _records_by_point(exp)
    assert before[("slow", 0)]["status"] == "finished", before
    assert before[("fast", 0)]["status"] == "stopped", before  # by ASHA, at its second rung
    ended = {k: r for k, r in before.items() if r["status"] in STATE_OF}
    states_before = _check_study_states(exp, ended)

    out = ray_session.run(["resume", str(exp), "--num-cpus", "2", "--no-report"],
                          tmp_path / "resume.log", 900, HPSEARCH_FAULT=nan)  # fmt: skip
    recs = _records_by_point(exp)
    assert {k: r["status"] for k, r in recs.items()} == {
        ("slow", 0): "finished",
        ("fast", 0): "stopped",
        ("slow", 1): "failed",
        ("fast", 1): "failed",
    }, out[-3000:]
    states = _check_study_states(exp, recs)
    for trial_id, state in states_before.items():  # what the study held before, kept as it was
        assert states[trial_id] == state
    pruned = states[recs[("fast", 0)]["trial_id"]]
    assert sorted(pruned["intermediate"]) == [1, 2]  # stopped at ASHA's first rung
    for seed1 in (("slow", 1), ("fast", 1)):  # its one evaluation before the NaN
        assert sorted(states[recs[seed1]["trial_id"]]["intermediate"]) == [1]
    # What the killed driver left open never stays RUNNING: a trial it had started (its record
    # closed as abandoned), or one it had asked Optuna for but not started (no record), is FAIL.
    study = _study(exp)
    assert [t for t in study.trials if t.state.name == "RUNNING"] == []
    kept = {r["trial_id"] for r in recs.values()}
    for trial in study.trials:
        if trial.user_attrs["ray_trial_id"] not in kept:
            assert trial.state.name == "FAIL", trial
