"""Adding an extension is one file plus its registry entry: a toy plug-in, end to end.

The toy (tests/assets/toy_extension/) averages task gradients instead of summing them. It
registers through the `hpsearch.extensions` entry-point group, as a third-party package
would, and nothing under hpsearch/, trainables/ or reports/ names it. Put on PYTHONPATH, it
is a config key of `hpsearch train`, a toggle a search space can vary, a variant in the
sweep's trial records, a label in its report, and it really runs inside the Ray trials.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "tests" / "assets" / "toy_extension"


def _env(hpsearch_environ: dict[str, str], marks: Path) -> dict[str, str]:
    env = dict(hpsearch_environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TOY), env.get("PYTHONPATH")]))
    env["TOY_MEAN_GRAD_MARKS"] = str(marks)
    return env


def _run(
    args: list[str], env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_plug_in_is_a_config_key_of_the_train_command(tmp_path, hpsearch_environ):
    marks = tmp_path / "marks"
    marks.mkdir()
    env = _env(hpsearch_environ, marks)
    out = tmp_path / "run"
    proc = _run(
        ["train", "trainables/configs/tiny.yaml", "extensions.mean_grad=true",
         "extensions.pcgrad=false", "train.max_steps=2", "--out", str(out)],
        env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mean_grad" in proc.stdout + proc.stderr  # the train command lists it as on
    assert json.loads((out / "config.json").read_text())["extensions"]["mean_grad"] is True
    assert list(marks.iterdir()), "MeanGradients.combine never ran"
    # without the plug-in on PYTHONPATH the key is unknown, refused in one line
    plain = _run(
        ["train", "trainables/configs/tiny.yaml", "extensions.mean_grad=true",
         "--out", str(tmp_path / "plain")],
        hpsearch_environ,
    )  # fmt: skip
    assert plain.returncode == 2, plain.stderr[-2000:]
    assert "extensions.mean_grad" in plain.stderr and "Traceback" not in plain.stderr
    # two gradient surgeries at once are refused in one line, naming both
    both = _run(
        ["train", "trainables/configs/tiny.yaml", "extensions.mean_grad=true",
         "--out", str(tmp_path / "both")],
        env,
    )  # fmt: skip
    assert both.returncode == 2, both.stderr[-2000:]
    assert "extensions.pcgrad and extensions.mean_grad" in both.stderr


def test_the_plug_in_is_a_toggle_in_a_sweep_and_its_report(tmp_path, hpsearch_environ, records):
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = "plugin"
    doc["search"].update(sampler="grid", scheduler="none")
    doc["search"].pop("asha", None)
    doc["search"].pop("num_samples", None)
    doc["parameters"] = {"train.lr": 1.0e-3}
    doc["variants"] = {"baseline": {}, "meangrad": {"extensions.mean_grad": True}}
    doc["seeds"] = [0]
    doc["base"]["train.max_steps"] = 4
    space = tmp_path / "plugin.yaml"
    space.write_text(yaml.safe_dump(doc, sort_keys=False))
    marks = tmp_path / "marks"
    marks.mkdir()
    proc = _run(
        ["sweep", str(space), "--storage-path", str(tmp_path), "--num-cpus", "2"],
        _env(hpsearch_environ, marks),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    exp = tmp_path / "plugin"
    # the sweep records the registry, plug-in included, for the reports to read
    toggles = json.loads((exp / "experiment.json").read_text())["toggles"]
    assert {"key": "extensions.mean_grad", "name": "mean_grad", "short": "meangrad",
            "label": "Mean Gradients"} in toggles  # fmt: skip
    recs = records(exp)
    by_variant = {r["variant"]: r for r in recs.values()}
    assert set(by_variant) == {"baseline", "meangrad"}
    assert all(r["status"] == "finished" for r in recs.values()), recs
    assert by_variant["meangrad"]["config"]["extensions.mean_grad"] is True
    assert by_variant["baseline"]["config"]["extensions.mean_grad"] is False
    # it ran inside the trial that turned it on (a Ray worker process), and only there
    assert list(marks.iterdir()), "MeanGradients.combine never ran in the sweep"
    # the report labels the variant with the plug-in's label, from the results alone
    report = exp / "report"
    with open(report / "table1_dev.csv") as f:
        columns = {row["variant"]: row["column"] for row in csv.DictReader(f)}
    assert columns == {"baseline": "Baseline", "meangrad": "Mean Gradients"}, columns
    assert "Mean Gradients" in (report / "report.md").read_text()
