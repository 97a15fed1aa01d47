"""A tuned ablation: every variant tuned on the same budget, then its best re-run over seeds.

    hpsearch sweep search_spaces/paper_ablation_tuned.yaml --data-dir ../shared/data/cs224n
    hpsearch resume results/paper_ablation_tuned      # continues at any point

A space with a `tuning:` section (hpsearch.space_tuning) runs as phases, each one an ordinary
hpsearch experiment (its own Optuna study, Ray state, trial records and report), so that every
phase is resumed the way any sweep is:

    tune-<variant>   one per variant: the space's parameters, sampler and scheduler, the same
                     `tuning.trials_per_variant` trials each, with `tuning.overrides`
    final            a grid: each variant's best tuning configuration x `tuning.final_seeds`,
                     at the space's full settings (no overrides)
    reference        a grid: each variant at `tuning.reference` x the same seeds (optional)

The experiment folder:

    ablation.json        the plan (variants, seeds, budget, phases, how the sweep runs) and, once
                         the tuning phases are done, each variant's tuned configuration
    search_space.yaml    the space file as given
    phases/<phase>.yaml  each phase's own search space, written just before the phase starts
    phases/<phase>/      each phase's experiment folder
    report/              the tuned-ablation report (reports.build_report reads ablation.json)

Each variant's best configuration is its finished tuning trial with the best objective (stopped
and failed trials are never chosen). Tuning runs at one seed, never one of the final seeds, so
the final runs are fresh draws, not the lucky tuning trial again.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from hpsearch import preflight
from hpsearch._yaml import load_strict
from hpsearch.experiment import (
    ABLATION_FILE,
    EXPERIMENT_FILE,
    PHASES_DIR,
    SPACE_COPY,
    TRIALS,
    new_experiment_dir,
    read_plan,
)
from hpsearch.settings import SweepSettings
from hpsearch.space import SEED_KEY, SearchSpace
from hpsearch.space_parser import SpaceFileParser
from hpsearch.space_tuning import TuningPlan
from trainables.atomic import write_json_atomic, write_text_atomic
from trainables.errors import ConfigError

__all__ = [
    "ABLATION_FILE",
    "PHASES_DIR",
    "is_tuned_ablation",
    "phase_documents",
    "resume_tuned_ablation",
    "run_tuned_ablation",
    "tuned_configurations",
]

_DONE = ("finished", "stopped", "failed")

# How a phase runs: hpsearch.sweep's run_sweep / resume_sweep, handed in by the facade (which
# dispatches tuned spaces here), so that this module sits beside it rather than above it.
RunPhase = Callable[[Path, SweepSettings], Path]
ResumePhase = Callable[..., Path]


def is_tuned_ablation(folder: str | Path) -> bool:
    """Whether `folder` is a tuned ablation's experiment folder."""
    return (Path(folder) / ABLATION_FILE).is_file()


# ------------------------------------------------------------------------ phase documents
def phase_documents(
    doc: dict[str, Any], plan: TuningPlan, best: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, Any]]:
    """Each phase's search-space document, from the tuned space's own document.

    Args:
        doc: the space file's YAML document (validated).
        plan: its tuning plan.
        best: each variant's tuned settings (dotted key -> value); None: placeholders (each
            parameter's first choice or lower bound), to validate the final phase up front.
    """
    base = dict(doc.get("base") or {})
    variants: dict[str, dict[str, Any]] = {k: dict(v or {}) for k, v in doc["variants"].items()}
    params: dict[str, Any] = dict(doc["parameters"])
    fixed = {k: v for k, v in params.items() if not isinstance(v, dict)}
    search = dict(doc.get("search") or {})
    grid_search = {k: v for k, v in search.items() if k in ("metric", "mode", "max_concurrent")}
    grid_search.update({"sampler": "grid", "seed": 0, "scheduler": "none"})
    name = doc.get("name", "tuned")
    docs: dict[str, dict[str, Any]] = {}
    for variant, settings in variants.items():
        docs[f"tune-{variant}"] = {
            "name": f"tune-{variant}",
            "description": f"{name}: tuning variant {variant} ({plan.trials_per_variant} trials)",
            "base": {**base, **plan.overrides},
            "variants": {variant: settings},
            "parameters": params,
            "search": {**search, "num_samples": plan.trials_per_variant},
        }
    final_base = {k: v for k, v in {**base, **fixed}.items() if k != SEED_KEY}
    chosen = best if best is not None else {v: _placeholder(params) for v in variants}
    docs["final"] = {
        "name": "final",
        "description": f"{name}: each variant's tuned configuration, once per final seed",
        "base": final_base,
        "variants": {v: {**settings, **chosen[v]} for v, settings in variants.items()},
        "seeds": list(plan.final_seeds),
        "search": grid_search,
    }
    if plan.reference:
        reference_base = {k: v for k, v in final_base.items() if k not in plan.reference}
        docs["reference"] = {
            "name": "reference",
            "description": f"{name}: each variant at the fixed reference settings, per seed",
            "base": {**reference_base, **plan.reference},
            "variants": variants,
            "seeds": list(plan.final_seeds),
            "search": grid_search,
        }
    return docs


def _placeholder(params: dict[str, Any]) -> dict[str, Any]:
    """A value each sampled parameter can take: its first choice, or its lower bound."""
    chosen = {}
    for key, spec in params.items():
        if not isinstance(spec, dict) or "when" in spec:
            continue
        chosen[key] = spec["choices"][0] if "choices" in spec else spec.get("low")
    return chosen


def _parse(doc: dict[str, Any], where: Path) -> SearchSpace:
    return SpaceFileParser(where, copy.deepcopy(doc), {}).build()


# -------------------------------------------------------------------------------- running
def run_tuned_ablation(
    space_path: Path,
    space: SearchSpace,
    settings: SweepSettings,
    run_phase: RunPhase,
    resume_phase: ResumePhase,
) -> Path:
    """Check every phase, lay out the folder, then run the phases in order."""
    doc = load_strict(space_path.read_text())
    if settings.smoke_test:  # the whole plan on a few trials: 2 per variant, 2 final seeds
        tuning = doc["tuning"]
        doc["tuning"] = {
            **tuning,
            "trials_per_variant": 2,
            "final_seeds": tuning["final_seeds"][:2],
        }
        space = _parse(doc, space_path)
    space_text = yaml.safe_dump(doc, sort_keys=False) if settings.smoke_test else None
    plan = _plan_of(space)
    if settings.warm_start and len(space.variants) > 1:
        raise ConfigError(
            "--warm-start: a tuned ablation tunes every variant from scratch on the same "
            "budget; warm-start one of its phases' studies in a sweep of its own instead"
        )
    # Every phase's space is checked before anything is written or launched: a placeholder
    # stands in for the tuned values the final phase will get.
    for phase, phase_doc in phase_documents(doc, plan).items():
        phase_space = _parse(phase_doc, space_path.with_name(f"{space_path.name} (phase {phase})"))
        preflight.check_sweep(phase_space, _phase_settings(settings, Path("."), phase))
    trial_overrides = preflight.check_sweep(space, settings)
    folder = new_experiment_dir(settings, space.name)
    preflight.check_sweep_data(space, trial_overrides)
    from hpsearch import driver  # Ray before the first write: a bad token is bad input too

    # A one-variant plan's one search starts from the earlier one: checked here, before
    # anything is written; its tuning phase reads the journal again when it starts.
    if settings.warm_start:
        tune_doc = phase_documents(doc, plan)[f"tune-{next(iter(space.variants))}"]
        driver.load_warm_start(settings.warm_start, _parse(tune_doc, space_path))
    driver.init_ray(settings.address, settings.num_cpus)
    folder.mkdir(parents=True)
    write_text_atomic(folder / SPACE_COPY, space_text or space_path.read_text())
    write_json_atomic(
        folder / ABLATION_FILE,
        {
            "kind": "tuned_ablation",
            "name": space.name,
            "space": str(space_path.resolve()),
            "variants": list(space.variants),
            "baseline": plan.baseline,
            "parameters": [p.key for p in space.parameters if p.kind != "fixed"],
            "trials_per_variant": plan.trials_per_variant,
            "final_seeds": plan.final_seeds,
            "tuning_overrides": plan.overrides,
            "reference": plan.reference,
            "metric": space.objectives[0].metric,
            "mode": space.objectives[0].mode,
            "phases": _phase_names(space, plan),
            "settings": settings.to_dict(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "tuned": None,
        },
    )
    print(
        f"tuned ablation {space.name}: {len(space.variants)} variants x "
        f"{plan.trials_per_variant} tuning trials, then {len(plan.final_seeds)} seeds each -> "
        f"{folder}"
    )
    _continue(folder, settings, run_phase, resume_phase)
    return folder


def resume_tuned_ablation(
    folder: str | Path,
    run_phase: RunPhase,
    resume_phase: ResumePhase,
    address: str | None = None,
    num_cpus: int | None = None,
    report: bool = True,
) -> Path:
    """Continue a tuned ablation where it stopped: done phases stay, the current one resumes."""
    folder = Path(folder).expanduser().resolve()
    plan = read_plan(folder)
    settings = SweepSettings.from_dict(plan["settings"])
    settings.address = address if address is not None else settings.address
    settings.num_cpus = num_cpus if num_cpus is not None else settings.num_cpus
    settings.report = report
    _continue(folder, settings, run_phase, resume_phase)
    return folder


def _continue(
    folder: Path, settings: SweepSettings, run_phase: RunPhase, resume_phase: ResumePhase
) -> None:
    record = read_plan(folder)
    space_path = folder / SPACE_COPY
    from hpsearch.space_parser import load_search_space

    space = load_search_space(space_path)
    plan = _plan_of(space)
    doc = load_strict(space_path.read_text())
    phases_dir = folder / PHASES_DIR
    phases_dir.mkdir(exist_ok=True)
    for phase in record["phases"]:
        state = _phase_state(phases_dir / phase)
        if state == "done":
            continue
        if state == "started":
            print(f"tuned ablation: resuming phase {phase}")
            resume_phase(
                phases_dir / phase,
                address=settings.address,
                num_cpus=settings.num_cpus,
                report=settings.report,
            )
            continue
        best = None
        if phase == "final":
            record = _record_tuned(folder, record, space)
            best = {variant: tuned["settings"] for variant, tuned in record["tuned"].items()}
        phase_doc = phase_documents(doc, plan, best)[phase]
        phase_file = phases_dir / f"{phase}.yaml"
        write_text_atomic(phase_file, yaml.safe_dump(phase_doc, sort_keys=False))
        print(f"tuned ablation: phase {phase}")
        run_phase(phase_file, _phase_settings(settings, phases_dir, phase))
    if settings.report:
        from reports import ReportError, build_report

        try:
            out = build_report(folder)
        except ReportError as exc:
            raise ConfigError(str(exc)) from None
        print(f"report: {out}")


def _phase_names(space: SearchSpace, plan: TuningPlan) -> list[str]:
    return [f"tune-{v}" for v in space.variants] + plan.phases


def _phase_settings(settings: SweepSettings, phases_dir: Path, phase: str) -> SweepSettings:
    """The sweep settings of one phase: the ablation's, in its phases folder. A warm start
    (one-variant plans only) seeds the tuning phase; the final and reference phases are grids."""
    return SweepSettings.from_dict(
        {
            **settings.to_dict(),
            "name": phase,
            "storage_path": str(phases_dir),
            "num_samples": None,
            "exist_ok_suffix": False,
            "warm_start": settings.warm_start if phase.startswith("tune-") else None,
        }
    )


def _phase_state(path: Path) -> str:
    """ "new" (no folder, or a folder a killed driver left before any trial started: removed,
    it holds no result), "started" or "done" (every planned trial ended)."""
    if not path.exists():
        return "new"
    records = sorted((path / TRIALS).glob("*.json"))
    if not records:
        from ray import tune

        if not tune.Tuner.can_restore(str(path)):
            shutil.rmtree(path)  # experiment.json, the space and an empty study: no result
            return "new"
        return "started"
    planned = json.loads((path / EXPERIMENT_FILE).read_text())["total_trials"]
    statuses = [json.loads(p.read_text()).get("status") for p in records]
    ended = sum(status in _DONE for status in statuses)
    return "done" if ended >= planned else "started"


def tuned_configurations(
    folder: Path, variants: list[str], tuned_keys: list[str], metric: str, mode: str
) -> dict[str, Any]:
    """Each variant's best finished tuning trial: {variant: {trial_id, value, settings}},
    `settings` being its values of the tuned parameters (those active in that trial)."""
    tuned: dict[str, Any] = {}
    for variant in variants:
        phase = folder / PHASES_DIR / f"tune-{variant}"
        best: tuple[float, dict[str, Any]] | None = None
        for path in sorted((phase / TRIALS).glob("*.json")):
            trial = json.loads(path.read_text())
            if trial.get("status") != "finished":
                continue
            summary_path = phase / trial["trial_dir"] / "summary.json"
            value = json.loads(summary_path.read_text()).get(metric)
            if not isinstance(value, (int, float)):
                continue
            score = value if mode == "max" else -value
            if best is None or score > best[0]:
                best = (score, trial)
        if best is None:
            raise ConfigError(
                f"{phase}: no tuning trial of variant {variant} finished with a {metric}, so "
                "it has no best configuration: see its trials/*.json for why; raise "
                "tuning.trials_per_variant or fix the failures, then start again"
            )
        trial = best[1]
        tuned[variant] = {
            "trial_id": trial["trial_id"],
            "value": best[0] if mode == "max" else -best[0],
            "settings": {k: trial["config"][k] for k in tuned_keys if k in trial["config"]},
        }
    return tuned


def _record_tuned(folder: Path, record: dict[str, Any], space: SearchSpace) -> dict[str, Any]:
    """Write each variant's tuned configuration into ablation.json (once) and return it."""
    if record.get("tuned"):
        return record
    tuned = tuned_configurations(
        folder,
        list(space.variants),
        record["parameters"],
        space.objectives[0].metric,
        space.objectives[0].mode,
    )
    record = {**record, "tuned": tuned}
    write_json_atomic(folder / ABLATION_FILE, record)
    for variant, chosen in tuned.items():
        shown = ", ".join(f"{k}={v}" for k, v in chosen["settings"].items())
        print(f"tuned ablation: {variant} best {chosen['value']:.4f} ({shown})")
    return record


def _plan_of(space: SearchSpace) -> TuningPlan:
    if space.tuning is None:
        raise ConfigError(f"{space.path}: has no tuning: section: it is not a tuned ablation")
    return space.tuning
