"""`--max-concurrent N` runs N TPE trials at once, measured on a real sweep's trial intervals
(docs/SEARCH_SPACES.md, "Parallel search")."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import yaml

REPO = Path(__file__).resolve().parents[2]


def running_at_once(intervals: list[tuple[float, float]]) -> list[tuple[float, float, int]]:
    """(from, to, how many intervals cover it) for each stretch between consecutive ends."""
    edges = sorted({t for span in intervals for t in span})
    return [
        (a, b, sum(start <= a and b <= end for start, end in intervals))
        for a, b in zip(edges, edges[1:], strict=False)
    ]


def overlap_share(intervals: list[tuple[float, float]], n: int) -> float:
    """The share of the span from the first start to the last end with at least n running."""
    stretches = running_at_once(intervals)
    span = stretches[-1][1] - stretches[0][0]
    return sum(b - a for a, b, k in stretches if k >= n) / span


def test_max_concurrent_two_runs_two_tpe_trials_at_once(tmp_path, cli, records):
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = "parallel"
    doc["search"].update(num_samples=4, scheduler="none")
    doc["search"].pop("asha")
    doc["search"].pop("max_concurrent")
    doc["parameters"]["train.epochs"] = 1
    space = tmp_path / "parallel.yaml"
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = cli("sweep", str(space), "--storage-path", str(tmp_path), "--num-cpus", "2",
              "--max-concurrent", "2", "--no-report")  # fmt: skip
    exp = tmp_path / "parallel"
    recs = list(records(exp).values())
    assert len(recs) == 4 and all(r["status"] == "finished" for r in recs), out.stdout[-3000:]

    # the driver's view: from a trial's start to its end (trials/<id>.json)
    spans = [(r["started_at"], r["ended_at"]) for r in recs]
    assert max(k for _, _, k in running_at_once(spans)) == 2  # two at once, never three
    share = overlap_share(spans, 2)
    # training itself, from each trial's first optimizer step to its last result (Ray's
    # result.json timestamps, whole seconds): two trials trained at the same time
    training = []
    for rec in recs:
        summary = json.loads((exp / rec["trial_dir"] / "summary.json").read_text())
        results = (Path(rec["ray_trial_dir"]) / "result.json").read_text().splitlines()
        training.append((summary["first_step_at"], json.loads(results[-1])["timestamp"] + 1.0))
    trained_together = overlap_share(training, 2)
    print(f"two trials at once {share:.0%} of the sweep, training {trained_together:.0%}")
    assert share >= 0.3, spans
    assert trained_together > 0, training

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(exp / "optuna.journal"))
    )
    study = optuna.load_study(study_name="parallel", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
