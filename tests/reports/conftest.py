"""Hand-built experiment folders whose correct reports are known.

`paper_exp`: the reference report's grid ablation, written file by file the way the sweep
driver writes it: baseline, cosine and sequential with seeds 1-3; pcgrad with seeds 1-2
finished and seed 3 failed (its metrics.jsonl ends in a truncated line); all extensions with a
single run; a sequential trial stopped early by ASHA; a pending trial; a corrupt trial file;
a real Optuna journal with the grid's single `grid_point` parameter.

`sampled_exp`: a TPE-style space over train.lr (log), model.dropout and cosine_sts, with a real
Optuna journal (its two trials stopped early are PRUNED there, as a sweep records them), for the
sampled-space tables, importances and scatter plots.

Both record the extension toggles in experiment.json as every sweep does (`TOGGLE_RECORDS`,
the registry's built-in toggles); `fx.TOGGLES` is that list as `reports.variants.Toggle`s,
for tests of tables built from hand-made frames.

Tests reach the builders and the expected values through the `fx` fixture (pytest runs with
--import-mode=importlib, so test modules cannot import this file by name).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from reports.variants import toggles_from_records

# experiment.json's "toggles": what a sweep records from the extension registry
TOGGLE_RECORDS = [
    {"key": "extensions.cosine_sts", "name": "cosine_sts", "short": "cosine", "label": "Cosine"},
    {"key": "extensions.pcgrad", "name": "pcgrad", "short": "pcgrad", "label": "Gradient Surgery"},
    {"key": "extensions.sequential_sts", "name": "sequential_sts", "short": "sequential",
     "label": "Sequential Learning"},
]  # fmt: skip
TOGGLES = toggles_from_records(TOGGLE_RECORDS)


def overall(sst: float, para: float, sts: float) -> float:
    return (sst + para + (sts + 1) / 2) / 3


# dev (sst_acc, para_acc, sts_r) of each finished trial, by variant and seed
DEV: dict[str, dict[int, tuple[float, float, float]]] = {
    "baseline": {1: (0.50, 0.70, 0.30), 2: (0.52, 0.72, 0.34), 3: (0.54, 0.74, 0.32)},
    # paired by seed: para exactly +0.05, sts +0.11/+0.09/+0.10 (true mean difference 0.10)
    "cosine": {1: (0.51, 0.75, 0.41), 2: (0.53, 0.77, 0.43), 3: (0.55, 0.79, 0.42)},
    "pcgrad": {1: (0.53, 0.73, 0.31), 2: (0.55, 0.75, 0.33)},
    # sst differences against baseline +0.03, -0.01, 0.00: the interval contains 0
    "sequential": {1: (0.53, 0.71, 0.28), 2: (0.51, 0.70, 0.27), 3: (0.54, 0.72, 0.29)},
    "all": {1: (0.56, 0.78, 0.45)},
}
VARIANT_TOGGLES = {
    "baseline": (False, False, False),
    "cosine": (True, False, False),
    "pcgrad": (False, True, False),
    "sequential": (False, False, True),
    "all": (True, True, True),
}
TRAIN_TIME = {
    "baseline": 1427.0,
    "cosine": 1782.0,
    "pcgrad": 2700.0,
    "sequential": 1461.0,
    "all": 2702.0,
}
STEPS = (10, 20, 30)


def held_out_scores(dev: tuple[float, float, float]) -> tuple[float, float, float]:
    """The "test" metrics of a finished trial, derived from its dev metrics."""
    sst, para, sts = dev
    return (sst - 0.01, para - 0.02, sts + 0.01)


def train_scores(dev: tuple[float, float, float]) -> tuple[float, float, float]:
    sst, para, sts = dev
    return (sst + 0.4, para + 0.05, sts + 0.5)


def config_for(variant: str, seed: int, **extra: Any) -> dict[str, Any]:
    cos, pc, seq = VARIANT_TOGGLES[variant]
    cfg = {
        "model.checkpoint": "minilm",
        "model.dropout": 0.3,
        "data.max_length": 128,
        "train.lr": 1e-05,
        "train.weight_decay": 0.0001,
        "train.epochs": 1,
        "train.seed": seed,
        "train.deepspeed.zero_stage": 0,
        "extensions.cosine_sts": cos,
        "extensions.pcgrad": pc,
        "extensions.sequential_sts": seq,
        "extensions.task_sampling": "cycle",
    }
    cfg.update(extra)
    return cfg


def _write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))


def _metric_line(step: int, dev: tuple[float, float, float], conflict: float | None) -> str:
    sst, para, sts = dev
    return json.dumps(
        {
            "step": step,
            "epoch": step / STEPS[-1],
            "time_s": step * 10.0,
            "phase": "multitask",
            "dev_sst_acc": sst,
            "dev_para_acc": para,
            "dev_sts_r": sts,
            "dev_overall": overall(sst, para, sts),
            "loss_sst": 1.0,
            "loss_para": 0.5,
            "loss_sts": 0.8,
            "pcgrad_conflict_rate": conflict,
        }
    )


def write_trial(
    exp: Path,
    trial_id: str,
    variant: str,
    seed: int,
    status: str,
    *,
    dev_curve: list[tuple[int, tuple[float, float, float]]],
    summary_dev: tuple[float, float, float] | None = None,
    reason: str | None = None,
    trial_dir: str | None = "auto",
    truncated_tail: str | None = None,
    config: dict[str, Any] | None = None,
    searched: list[str] | None = None,
    train_time: float = 100.0,
) -> None:
    rel = f"runs/{trial_id}" if trial_dir == "auto" else trial_dir
    cfg = config or config_for(variant, seed)
    _write_json(
        exp / "trials" / f"{trial_id}.json",
        {
            "trial_id": trial_id,
            "status": status,
            "reason": reason,
            "trial_dir": rel,
            "variant": variant,
            "config": cfg,
            "searched": searched if searched is not None else ["variant", "train.seed"],
        },
    )
    if rel is None:
        return
    tdir = Path(rel) if Path(rel).is_absolute() else exp / rel
    tdir.mkdir(parents=True, exist_ok=True)
    lines = [
        _metric_line(step, dev, 0.5 - step / 100 if cfg["extensions.pcgrad"] else None)
        for step, dev in dev_curve
    ]
    text = "\n".join(lines) + "\n"
    if truncated_tail is not None:
        text += truncated_tail
    (tdir / "metrics.jsonl").write_text(text)
    if summary_dev is not None:
        te, tr = held_out_scores(summary_dev), train_scores(summary_dev)
        summary = {
            "status": "finished",
            "steps": dev_curve[-1][0],
            "epochs": 1.0,
            "train_time_s": train_time,
            "peak_mem_mb": 1000.0 + seed,
        }
        for split, (sst, para, sts) in (("dev", summary_dev), ("train", tr), ("test", te)):
            summary.update(
                {
                    f"{split}_sst_acc": sst,
                    f"{split}_para_acc": para,
                    f"{split}_sts_r": sts,
                    f"{split}_overall": overall(sst, para, sts),
                }
            )
        _write_json(tdir / "summary.json", summary)


def _ramp(final: tuple[float, float, float]) -> list[tuple[int, tuple[float, float, float]]]:
    """Evaluations at STEPS climbing to `final` at the last one."""
    return [
        (s, tuple(v - 0.02 * (len(STEPS) - 1 - i) for v in final))  # type: ignore[misc]
        for i, s in enumerate(STEPS)
    ]


def build_paper_exp(exp: Path) -> dict[str, Any]:
    exp.mkdir(parents=True)
    _write_json(
        exp / "experiment.json",
        {
            "name": "paper_ablation",
            "study_name": "paper_ablation-study",
            "metric": "dev_overall",
            "mode": "max",
            "objectives": [{"metric": "dev_overall", "mode": "max"}],
            "total_trials": 15,
            "created": "2026-11-02T10:00:00",
            "command": "hpsearch sweep search_spaces/paper_ablation.yaml",
            "toggles": TOGGLE_RECORDS,
        },
    )
    (exp / "search_space.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "paper_ablation",
                "search": {"sampler": "grid", "metric": "dev_overall", "mode": "max"},
                "parameters": {},
                "variants": {v: {} for v in VARIANT_TOGGLES},
                "seeds": [1, 2, 3],
            }
        )
    )
    ids: dict[tuple[str, int], str] = {}
    for variant, runs in DEV.items():
        for seed, dev in runs.items():
            tid = f"{variant}_s{seed}"
            ids[(variant, seed)] = tid
            trial_dir = str(exp.resolve() / "abs_runs" / tid) if tid == "cosine_s2" else "auto"
            write_trial(
                exp,
                tid,
                variant,
                seed,
                "finished",
                dev_curve=_ramp(dev),
                summary_dev=dev,
                trial_dir=trial_dir,
                train_time=TRAIN_TIME[variant] + seed,
            )
    write_trial(
        exp,
        "pcgrad_s3",
        "pcgrad",
        3,
        "failed",
        reason="non-finite loss at step 13",
        dev_curve=[(10, (0.40, 0.60, 0.20))],
        truncated_tail='{"step": 13, "epoch": 0.43, "dev_sst',
    )
    write_trial(
        exp,
        "sequential_s4",
        "sequential",
        4,
        "stopped",
        reason="stopped early by ASHA after 2 evaluations",
        dev_curve=[(10, (0.30, 0.60, 0.10)), (20, (0.35, 0.62, 0.12))],
    )
    write_trial(exp, "all_s2", "all", 2, "pending", dev_curve=[], trial_dir=None)
    (exp / "trials" / "broken.json").write_text('{"trial_id": "broken", "status": ')

    # The grid's Optuna study: one categorical grid_point parameter per trial.
    storage = JournalStorage(JournalFileBackend(str(exp / "optuna.journal")))
    study = optuna.create_study(
        study_name="paper_ablation-study", storage=storage, direction="maximize"
    )
    dist = {"grid_point": CategoricalDistribution(list(range(15)))}
    for i, (key, _) in enumerate(sorted(ids.items())):
        dev = DEV[key[0]][key[1]]
        study.add_trial(
            optuna.trial.create_trial(
                params={"grid_point": i}, distributions=dist, value=overall(*dev)
            )
        )
    return {"ids": ids}


# A sampled space: (trial_id, lr, dropout, cosine_sts, status, final dev)
SAMPLED = [
    ("t00", 1e-5, 0.10, False, "finished", (0.50, 0.70, 0.30)),
    ("t01", 3e-5, 0.20, False, "finished", (0.52, 0.71, 0.31)),
    ("t02", 1e-4, 0.30, False, "finished", (0.45, 0.66, 0.20)),
    ("t03", 2e-6, 0.10, True, "finished", (0.47, 0.69, 0.36)),
    ("t04", 2e-5, 0.25, True, "finished", (0.54, 0.74, 0.44)),
    ("t05", 5e-5, 0.40, True, "finished", (0.51, 0.72, 0.40)),
    ("t06", 8e-5, 0.05, True, "finished", (0.49, 0.70, 0.38)),
    ("t07", 1e-6, 0.45, False, "stopped", (0.30, 0.60, 0.05)),
    ("t08", 9e-5, 0.35, True, "stopped", (0.33, 0.61, 0.08)),
]
SAMPLED_SEARCHED = ["train.lr", "model.dropout", "extensions.cosine_sts"]


def build_sampled_exp(exp: Path) -> None:
    exp.mkdir(parents=True)
    _write_json(
        exp / "experiment.json",
        {
            "name": "tpe_demo",
            "study_name": "tpe_demo",
            "metric": "dev_overall",
            "mode": "max",
            "objectives": [{"metric": "dev_overall", "mode": "max"}],
            "total_trials": 10,
            "created": "2026-11-02T11:00:00",
            "command": "hpsearch sweep search_spaces/demo.yaml",
            "toggles": TOGGLE_RECORDS,
        },
    )
    (exp / "search_space.yaml").write_text(
        yaml.safe_dump(
            {
                "name": "tpe_demo",
                "search": {"sampler": "tpe", "num_samples": 10},
                "parameters": {
                    "train.lr": {"type": "float", "low": 1e-6, "high": 1e-4, "log": True},
                    "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
                    "extensions.cosine_sts": {"type": "categorical", "choices": [False, True]},
                },
            }
        )
    )
    storage = JournalStorage(JournalFileBackend(str(exp / "optuna.journal")))
    study = optuna.create_study(study_name="tpe_demo", storage=storage, direction="maximize")
    dists = {
        "train.lr": FloatDistribution(1e-6, 1e-4, log=True),
        "model.dropout": FloatDistribution(0.0, 0.5),
        "extensions.cosine_sts": CategoricalDistribution([False, True]),
    }
    for tid, lr, dropout, cos, status, dev in SAMPLED:
        variant = "cosine" if cos else "baseline"
        cfg = config_for(variant, 11711, **{"train.lr": lr, "model.dropout": dropout})
        curve = _ramp(dev) if status == "finished" else _ramp(dev)[:2]
        write_trial(
            exp,
            tid,
            variant,
            11711,
            status,
            dev_curve=curve,
            summary_dev=dev if status == "finished" else None,
            config=cfg,
            searched=SAMPLED_SEARCHED,
            reason="stopped early by ASHA after 2 evaluations" if status == "stopped" else None,
        )
        # as a sweep records them: a trial ASHA stopped is PRUNED, its value the last of its
        # intermediate values (one per evaluation, step 1, 2, ...)
        scores = [overall(*d) for _, d in curve]
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.COMPLETE if status == "finished" else TrialState.PRUNED,
                params={"train.lr": lr, "model.dropout": dropout, "extensions.cosine_sts": cos},
                distributions=dists,
                value=overall(*dev) if status == "finished" else scores[-1],
                intermediate_values=dict(enumerate(scores, start=1)),
                user_attrs={"ray_trial_id": tid},
            )
        )


@pytest.fixture(scope="session")
def fx() -> SimpleNamespace:
    """The builders and expected values above, for test modules."""
    return SimpleNamespace(
        DEV=DEV,
        SAMPLED=SAMPLED,
        SAMPLED_SEARCHED=SAMPLED_SEARCHED,
        TOGGLE_RECORDS=TOGGLE_RECORDS,
        TOGGLES=TOGGLES,
        overall=overall,
        held_out_scores=held_out_scores,
        write_trial=write_trial,
        config_for=config_for,
        build_paper_exp=build_paper_exp,
        build_sampled_exp=build_sampled_exp,
    )


@pytest.fixture(scope="session")
def paper_exp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp = tmp_path_factory.mktemp("paper") / "paper_ablation"
    build_paper_exp(exp)
    return exp


@pytest.fixture(scope="session")
def paper_report(paper_exp: Path) -> Path:
    from reports import build_report

    return build_report(paper_exp)


@pytest.fixture(scope="session")
def sampled_exp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    exp = tmp_path_factory.mktemp("sampled") / "tpe_demo"
    build_sampled_exp(exp)
    return exp


@pytest.fixture(scope="session")
def sampled_report(sampled_exp: Path) -> Path:
    from reports import build_report

    return build_report(sampled_exp)
