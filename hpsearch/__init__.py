"""hpsearch: distributed hyperparameter search for multitask minBERT (Ray Tune + Optuna).

The public API; `import hpsearch` stays cheap (each name is imported on first use):

    from hpsearch import SweepSettings, load_search_space, run_sweep
    space = load_search_space("search_spaces/smoke.yaml")
    exp_dir = run_sweep("search_spaces/smoke.yaml", SweepSettings(max_concurrent=2))
    resume_sweep(exp_dir)
    experiment = Experiment.load(exp_dir)

Modules, in the order a sweep meets them: cli (argparse), settings (SweepSettings, every
default), space_parser (the YAML file -> SearchSpace, in space), preflight (the one check
before launch, shared with `hpsearch train`), experiment (the folder and experiment.json),
driver (Ray Tune's side in the driver), worker (what runs inside Ray workers), sweep (the
facade tying them together).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpsearch.experiment import Experiment
    from hpsearch.settings import SMOKE_OVERRIDES, SweepSettings
    from hpsearch.space import SearchSpace
    from hpsearch.space_parser import load_search_space, validate_all
    from hpsearch.sweep import resume_sweep, run_sweep
    from trainables.errors import ConfigError

__all__ = [
    "SMOKE_OVERRIDES",
    "ConfigError",
    "Experiment",
    "SearchSpace",
    "SweepSettings",
    "load_search_space",
    "resume_sweep",
    "run_sweep",
    "validate_all",
]

_WHERE = {
    "SMOKE_OVERRIDES": "hpsearch.settings",
    "ConfigError": "trainables.errors",
    "Experiment": "hpsearch.experiment",
    "SearchSpace": "hpsearch.space",
    "SweepSettings": "hpsearch.settings",
    "load_search_space": "hpsearch.space_parser",
    "resume_sweep": "hpsearch.sweep",
    "run_sweep": "hpsearch.sweep",
    "validate_all": "hpsearch.space_parser",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562)."""
    if name not in _WHERE:
        raise AttributeError(f"module 'hpsearch' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
