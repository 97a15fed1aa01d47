"""TensorBoard's HParams view: one session per trial, dev metrics only, read back over HTTP.

A real tiny sweep (Ray Tune, Optuna, DeepSpeed) in which ASHA stops a trial and a fault fails
another; then a real TensorBoard over the experiment folder, queried through the HParams
plugin's HTTP API (/data/plugin/hparams/experiment and /session_groups, a JSON body in a POST,
as TensorBoard's own page sends it). The TensorBoard is stopped in a `with` block whatever
happens. A run on its own (`TensorBoardLogger` without a sweep) gets its one session too.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from hpsearch.tensorboard import start_tensorboard
from trainables.minbert.callbacks import HPARAMS_METRICS, TensorBoardLogger

REPO = Path(__file__).resolve().parents[2]
WAIT_S = 120.0  # TensorBoard answers in ~2 s on a quiet machine; far longer on a loaded one
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_ALL_STATUSES = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
# One trial at a time, so that ASHA's decisions are always the same: the grid runs its
# points in a seeded order (seeds 0, 1, 3, 2 with these choices), and at the first rung the
# deterministic dev scores of seeds 1 and 2 are below those before them (0.41 < 0.45, and
# 0.34 < 0.43): ASHA stops both. Seed 3 fails for good (a real NaN loss in its training
# loop, before its first evaluation).
_FAULT = "nan_at_step:2@seed=3"


def _space(tmp_path: Path) -> Path:
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = "hparams"
    doc["search"].update(sampler="grid", max_concurrent=1)
    doc["search"].pop("num_samples")
    doc["parameters"] = {
        "train.seed": {"type": "categorical", "choices": [2, 3, 0, 1]},
        "extensions.pcgrad": {"type": "categorical", "choices": [True]},
        "train.lr": 3.0e-3,
    }
    path = tmp_path / "hparams.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with _OPENER.open(request, timeout=WAIT_S) as resp:
        return json.load(resp)


def _session_groups(url: str) -> list[dict[str, Any]]:
    body = {"allowedStatuses": _ALL_STATUSES, "startIndex": 0, "sliceSize": 1000}
    return list(_post(url + "data/plugin/hparams/session_groups", body).get("sessionGroups", []))


def _wait_for_sessions(url: str, count: int, ended: int) -> list[dict[str, Any]]:
    """The session groups once `count` sessions, `ended` of them with an end, are loaded."""
    deadline = time.monotonic() + WAIT_S
    while True:
        groups = _session_groups(url)
        sessions = [s for g in groups for s in g["sessions"]]
        if len(sessions) >= count and sum("endTimeSecs" in s for s in sessions) >= ended:
            return groups
        if time.monotonic() > deadline:
            return groups
        time.sleep(0.5)


# Four trials one after another: about 30 s on 2 quiet cores, but each starts a fresh Ray
# worker, and beside a CPU hog per core that took over 10 minutes once: the limits are sized
# for that, well above pytest's default --timeout.
@pytest.mark.timeout(2700)
def test_one_hparams_session_per_trial_with_its_status_and_dev_metrics_only(
    tmp_path: Path, hpsearch_environ: dict[str, str], records: Any
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "sweep", str(_space(tmp_path))]
        + ["--storage-path", str(tmp_path), "--num-cpus", "2", "--no-report"],
        cwd=REPO,
        env={**hpsearch_environ, "HPSEARCH_FAULT": _FAULT},
        capture_output=True,
        text=True,
        timeout=2400,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    exp = tmp_path / "hparams"
    recs = records(exp)
    statuses = {tid: r["status"] for tid, r in recs.items()}
    assert sorted(statuses.values()).count("stopped") >= 1, statuses
    assert list(statuses.values()).count("failed") == 1, statuses
    assert "finished" in statuses.values(), statuses
    # Ray's own TensorBoard logger is off: the only event files are the trials' own
    assert not [p for p in exp.rglob("events.out.tfevents.*") if "runs" not in p.parts]

    with start_tensorboard(exp, reload_interval_s=1, timeout_s=WAIT_S) as tb:
        groups = _wait_for_sessions(tb.url, count=len(recs), ended=len(recs))
        experiment = _post(tb.url + "data/plugin/hparams/experiment", {})
    sessions = {s["name"]: (g, s) for g in groups for s in g["sessions"]}
    # exactly one session per trial, each in the trial's own run folder
    assert sorted(sessions) == sorted(f"runs/{tid}/tb" for tid in recs), sorted(sessions)
    expected_status = {"finished": "STATUS_SUCCESS", "stopped": "STATUS_SUCCESS"}
    for tid, status in statuses.items():
        group, session = sessions[f"runs/{tid}/tb"]
        assert session.get("status") == expected_status.get(status, "STATUS_FAILURE"), status
        assert session["endTimeSecs"] >= session["startTimeSecs"] > 0
        # the searched hyperparameters, a boolean as a boolean
        assert group["hparams"]["extensions.pcgrad"] is True
        assert group["hparams"]["train.seed"] == recs[tid]["config"]["train.seed"]
        tags = {m["name"]["tag"] for m in session.get("metricValues", [])}
        assert tags <= set(HPARAMS_METRICS), tags
        if status != "failed":  # it failed before its first evaluation: no scalars
            assert "dev/overall" in tags, session
            value = next(m for m in session["metricValues"] if m["name"]["tag"] == "dev/overall")
            lines = (exp / "runs" / tid / "metrics.jsonl").read_text().splitlines()
            assert value["value"] == pytest.approx(json.loads(lines[-1])["dev_overall"])

    # the experiment's columns: searched hyperparameters typed as they are, dev metrics only
    metrics = [m["name"]["tag"] for m in experiment["metricInfos"]]
    assert sorted(metrics) == sorted(HPARAMS_METRICS)
    assert not [m for m in metrics if "test" in m or "train" in m]
    types = {h["name"]: h["type"] for h in experiment["hparamInfos"]}
    assert types == {"train.seed": "DATA_TYPE_FLOAT64", "extensions.pcgrad": "DATA_TYPE_BOOL"}


def test_a_run_on_its_own_gets_one_session_ended_by_its_outcome(tmp_path: Path) -> None:
    """`hpsearch train`: no driver, so the trainer's TensorBoardLogger writes the session."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import api_pb2, metadata

    from trainables.minbert.config import TrialConfig

    def run(log_dir: Path, outcome: str) -> dict[str, Any]:
        trainer = SimpleNamespace(cfg=TrialConfig(), callbacks=[])
        logger = TensorBoardLogger(log_dir)
        trainer.callbacks.append(logger)
        logger.on_train_start(trainer)  # type: ignore[arg-type]
        logger.on_evaluate(trainer, {"step": 1, "dev_overall": 0.5, "test_overall": 0.9}, None)  # type: ignore[arg-type]
        if outcome == "finished":
            logger.on_train_end(trainer, {"test_overall": 0.9})  # type: ignore[arg-type]
        else:  # the process exits before training ends: what atexit runs
            logger.writer.close()
            logger._end_session("failed")
        accumulator = EventAccumulator(str(log_dir))
        accumulator.Reload()
        return dict(accumulator.PluginTagToContent(metadata.PLUGIN_NAME))

    for outcome, status in (
        ("finished", api_pb2.STATUS_SUCCESS),
        ("failed", api_pb2.STATUS_FAILURE),
    ):
        content = run(tmp_path / outcome, outcome)
        assert set(content) == {
            metadata.EXPERIMENT_TAG,
            metadata.SESSION_START_INFO_TAG,
            metadata.SESSION_END_INFO_TAG,
        }
        start = metadata.parse_session_start_info_plugin_data(
            content[metadata.SESSION_START_INFO_TAG]
        )
        assert start.hparams["extensions.pcgrad"].WhichOneof("kind") == "bool_value"
        assert start.hparams["train.lr"].WhichOneof("kind") == "number_value"
        end = metadata.parse_session_end_info_plugin_data(content[metadata.SESSION_END_INFO_TAG])
        assert end.status == status
        experiment = metadata.parse_experiment_plugin_data(content[metadata.EXPERIMENT_TAG])
        assert [m.name.tag for m in experiment.metric_infos] == list(HPARAMS_METRICS)


def test_no_session_from_the_trainer_in_a_sweep(tmp_path: Path) -> None:
    """A callback that says the driver writes the session (the sweep's reporter): scalars only."""
    from trainables.minbert.callbacks import TrainerCallback
    from trainables.minbert.config import TrialConfig

    class DriverWritesIt(TrainerCallback):
        hparams_elsewhere = True

    logger = TensorBoardLogger(tmp_path / "tb")
    trainer = SimpleNamespace(cfg=TrialConfig(), callbacks=[logger, DriverWritesIt()])
    logger.on_train_start(trainer)  # type: ignore[arg-type]
    logger.on_train_end(trainer, {})  # type: ignore[arg-type]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert not list((tmp_path / "tb").glob("*.hparams"))
