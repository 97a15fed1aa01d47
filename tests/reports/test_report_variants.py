"""Variant names and labels come from the toggles experiment.json records, never from code."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from reports import build_report, load_results
from reports.effects import toggle_effects
from reports.score_tables import config_table, metric_table
from reports.variants import (
    Toggle,
    order_variants,
    toggles_from_records,
    variant_label,
    variant_labels,
    variant_name,
)

MEAN_GRAD = {
    "key": "extensions.mean_grad",
    "name": "mean_grad",
    "short": "meangrad",
    "label": "Mean Gradients",
}


def _experiment(exp: Path, **fields: Any) -> None:
    exp.mkdir(parents=True)
    record = {"name": exp.name, "metric": "dev_overall", "mode": "max", "total_trials": 4}
    (exp / "experiment.json").write_text(json.dumps({**record, **fields}))


def _plugin_sweep(exp: Path, fx: SimpleNamespace) -> None:
    """Baseline and a fourth, plug-in toggle ("meangrad"), two seeds each, recorded as a sweep
    records them; one more trial with no variant in its record (pcgrad and mean_grad on)."""
    _experiment(exp, toggles=[*fx.TOGGLE_RECORDS, MEAN_GRAD])
    for variant, on in (("baseline", False), ("meangrad", True)):
        for seed in (1, 2):
            dev = (0.50 + 0.05 * on + 0.01 * seed, 0.70, 0.30 + 0.1 * on)
            fx.write_trial(
                exp,
                f"{variant}_s{seed}",
                variant,
                seed,
                "finished",
                dev_curve=[(10, dev)],
                summary_dev=dev,
                config=fx.config_for("baseline", seed, **{"extensions.mean_grad": on}),
            )
    both = fx.config_for("pcgrad", 3, **{"extensions.mean_grad": True})
    fx.write_trial(exp, "unnamed", "pcgrad", 3, "stopped", dev_curve=[(10, (0.4, 0.6, 0.2))],
                   config=both)  # fmt: skip
    record = json.loads((exp / "trials" / "unnamed.json").read_text())
    record["variant"] = None
    (exp / "trials" / "unnamed.json").write_text(json.dumps(record))


def test_a_fourth_recorded_toggle_names_labels_and_effects_with_no_code_change(
    tmp_path: Path, fx: SimpleNamespace
) -> None:
    exp = tmp_path / "plugin"
    _plugin_sweep(exp, fx)
    res = load_results(exp)
    assert [t.short for t in res.toggles] == ["cosine", "pcgrad", "sequential", "meangrad"]
    assert not any("toggles" in w for w in res.warnings)
    variants = dict(zip(res.trials["trial_id"], res.trials["variant"], strict=True))
    assert variants["unnamed"] == "pcgrad+meangrad"  # derived from the recorded list
    dev = metric_table(res.trials, "dev", toggles=res.toggles)
    assert list(dev.display.columns) == ["Baseline", "Mean Gradients"]
    labels = variant_labels(["meangrad", "pcgrad+meangrad"], res.toggles)
    assert labels == {"meangrad": "Mean Gradients",
                      "pcgrad+meangrad": "pcgrad+meangrad"}  # fmt: skip
    effects = toggle_effects(res.trials, toggles=res.toggles, metrics=["dev_sts_r"])
    diff = effects.data.set_index("comparison").loc["mean_grad: on − off", "diff"]
    assert diff == pytest.approx(0.1)
    assert "extensions.mean_grad" in effects.notes[0]
    configs = config_table(res.trials, toggles=res.toggles)
    assert configs.display.loc["Mean Gradients", "Extensions"] == "mean_grad, sampling cycle"
    assert configs.display.loc["Baseline", "Extensions"] == "sampling cycle"
    # and in the written report, from the results alone
    report = build_report(exp)
    columns = pd.read_csv(report / "table1_dev.csv").drop_duplicates("variant")
    assert dict(zip(columns["variant"], columns["column"], strict=True)) == {
        "baseline": "Baseline",
        "meangrad": "Mean Gradients",
    }
    assert "Mean Gradients" in (report / "report.md").read_text()


def test_an_experiment_without_recorded_toggles_shows_variants_by_name(
    tmp_path: Path, fx: SimpleNamespace
) -> None:
    exp = tmp_path / "old"
    _experiment(exp)  # written before sweeps recorded their toggles
    for variant in ("baseline", "cosine"):
        fx.write_trial(exp, variant, variant, 1, "finished", dev_curve=[(10, (0.5, 0.7, 0.3))],
                       summary_dev=(0.5, 0.7, 0.3))  # fmt: skip
    res = load_results(exp)
    assert res.toggles == ()
    notes = [w for w in res.warnings if "toggles" in w]
    assert notes == [
        "experiment.json records no extension toggles (written before sweeps recorded them): "
        "toggles unknown, variants are shown by name"
    ]
    dev = metric_table(res.trials, "dev", toggles=res.toggles)
    assert list(dev.display.columns) == ["Baseline", "cosine"]  # no hard-coded labels
    effects = toggle_effects(res.trials, toggles=res.toggles)
    assert effects.empty and effects.notes[0].startswith("No extension toggle")
    md = (build_report(exp) / "report.md").read_text()
    assert "Data note: experiment.json records no extension toggles" in md


def test_a_malformed_toggles_list_is_ignored_with_one_note(tmp_path: Path) -> None:
    exp = tmp_path / "bad"
    _experiment(exp, toggles=[{"key": "extensions.pcgrad", "name": "pcgrad"}])
    res = load_results(exp)
    assert res.toggles == ()
    assert sum("toggles list is malformed" in w for w in res.warnings) == 1


def test_names_labels_and_order_follow_the_recorded_list(fx: SimpleNamespace) -> None:
    toggles = toggles_from_records([*fx.TOGGLE_RECORDS, MEAN_GRAD])
    assert toggles is not None and toggles[-1] == Toggle(**MEAN_GRAD)
    off = {t.key: False for t in toggles}
    assert variant_name(off, toggles) == "baseline"
    assert variant_name({**off, "extensions.mean_grad": True}, toggles) == "meangrad"
    # registry order, not the order of the config's keys
    both = {"extensions.mean_grad": True, "extensions.cosine_sts": True}
    assert variant_name(both, toggles) == "cosine+meangrad"
    assert variant_name({t.key: True for t in toggles}, toggles) == "all"
    three = {t.key: True for t in toggles[:3]}
    assert variant_name(three, toggles) == "cosine+pcgrad+sequential"  # not all four
    only = toggles[:1]
    assert variant_name({"extensions.cosine_sts": True}, only) == "cosine"  # one toggle: no "all"
    assert variant_label("all", toggles) == "All Extensions"
    assert variant_label("baseline", toggles) == "Baseline"
    assert variant_label("cosine+meangrad", toggles) == "cosine+meangrad"  # as named
    # a user-chosen name is shown as it is: no alias guessing
    for name in ("gradient_surgery", "cosine_similarity", "Pcgrad", "cosine+extra"):
        assert variant_label(name, toggles) == name
    assert order_variants(
        ["zeta", "all", "meangrad", "cosine+meangrad", "sequential", "baseline", "cosine"],
        toggles,
    ) == ["baseline", "cosine", "sequential", "meangrad", "all", "cosine+meangrad", "zeta"]
