"""The one registry of extension toggles: config key, short name, report label, plug-in point.

Every consumer reads this list and nothing else: the trial config builds its `extensions.*`
fields from it, the search-space validator and the variant names ("baseline", "cosine",
"cosine+pcgrad", "all") come from it, the train command prints the toggles that are on, and
each sweep records it in `experiment.json` so that reports label variants from the results,
without importing any of this.

Adding an extension is one new file in this folder (a small class behind one of the narrow
interfaces: `GradientSurgery`, `TaskSampler`, `PhasePlan`, `PairSimilarity`, `ParamGroups`,
`LrSchedule`, `TaskLayers`, `LossTerm`) plus one entry in
`BUILTIN` below. An extension that lives in another package registers itself the same way
through the `hpsearch.extensions` entry-point group, whose entries load to a `Toggle`:

    # pyproject.toml of the other package
    [project.entry-points."hpsearch.extensions"]
    mean_grad = "my_package.mean_grad:TOGGLE"

This module must stay cheap to import (no torch): `factory` names the implementing class as
"module:attribute" and is imported only when a trial builds it.
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field

from trainables.errors import ConfigError

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "KINDS",
    "STACKABLE",
    "Toggle",
    "active_toggle",
    "active_toggles",
    "build_active",
    "build_all_active",
    "check_combination",
    "load_factory",
    "toggle_records",
    "toggles",
    "variant_name",
]

ENTRY_POINT_GROUP = "hpsearch.extensions"
# The interfaces an extension may plug into, each asked for at one point of a trial:
#   surgery      GradientSurgery  how per-task gradients become one update (engine step)
#   phases       PhasePlan        which phases (task sets, epochs) run before the multitask loop
#   sts_head     PairSimilarity   how two sentence embeddings become an STS score
#   param_groups ParamGroups      how the trainable parameters split into optimizer groups
#                                 (each with its own learning-rate scale)
#   lr_schedule  LrSchedule       the learning-rate multiplier at each optimizer step
#   task_layers  TaskLayers       per-task layers between the shared encoder and the heads
#   loss_term    LossTerm         an extra term added to a task's training loss; several
#                                 loss terms may be on together (STACKABLE)
Kind = Literal[
    "surgery", "phases", "sts_head", "param_groups", "lr_schedule", "task_layers", "loss_term"
]
KINDS: tuple[Kind, ...] = (
    "surgery",
    "phases",
    "sts_head",
    "param_groups",
    "lr_schedule",
    "task_layers",
    "loss_term",
)
# Kinds of which any number of toggles may be on at once (each adds to the others); of every
# other kind at most one is on, since each replaces one step of the trial.
STACKABLE: frozenset[Kind] = frozenset({"loss_term"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_SHORT = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Toggle:
    """One extension switch, as every part of hpsearch sees it.

    Attributes:
        name: the config key under `extensions.` (`extensions.<name>: true` turns it on).
        short: its part of a variant name ("cosine" -> "cosine+pcgrad"); "baseline" and "all"
            are reserved.
        label: its name in report tables ("Gradient Surgery").
        kind: the interface it plugs into (one of `KINDS`); two toggles of the same kind
            cannot both be on, unless the kind is `STACKABLE`.
        factory: "module:attribute" of the implementing class, imported only when a trial
            builds it; the class is called with the trial's `TrialConfig`.
        help: one line for `--help`-style listings and the config field's description.
        options: further settings under `extensions.`, as pydantic field definitions
            `{name: (type, default or pydantic.Field(...))}`, used when the toggle is on.
        requires: `{config key: (allowed values, why)}`: settings the toggle needs; with the
            toggle on, any other value is refused in one line that gives `why` and the fix.
    """

    name: str
    short: str
    label: str
    kind: Kind
    factory: str
    help: str = ""
    options: Mapping[str, tuple[Any, Any]] = field(default_factory=dict)
    requires: Mapping[str, tuple[tuple[Any, ...], str]] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The dotted config key: "extensions.<name>"."""
        return f"extensions.{self.name}"

    def record(self) -> dict[str, str]:
        """What a sweep writes to experiment.json (reports read this, not the code)."""
        return {"key": self.key, "name": self.name, "short": self.short, "label": self.label}


BUILTIN: tuple[Toggle, ...] = (
    Toggle(
        name="cosine_sts",
        short="cosine",
        label="Cosine",
        kind="sts_head",
        factory="trainables.minbert.extensions.cosine_sts:CosineSimilarity",
        help="Sentence-BERT STS: cosine of mean-pooled embeddings, scaled to 0-5",
        requires={"model.pair_encoding": (("siamese",), "compares two sentence embeddings")},
    ),
    Toggle(
        name="pcgrad",
        short="pcgrad",
        label="Gradient Surgery",
        kind="surgery",
        factory="trainables.minbert.extensions.pcgrad:PCGrad",
        help="gradient surgery (Yu et al. 2020) across the three task losses",
        requires={
            "train.deepspeed.zero_stage": (
                (0, 1, 2),
                "needs per-task gradients, which ZeRO-3 partitions away",
            )
        },
    ),
    Toggle(
        name="sequential_sts",
        short="sequential",
        label="Sequential Learning",
        kind="phases",
        factory="trainables.minbert.extensions.sequential_sts:SequentialSts",
        help="STS-only epochs before the multitask loop",
        options={
            "sequential_sts_epochs": (
                int,
                Field(1, ge=1, description="STS-only epochs (used when sequential_sts is on)"),
            )
        },
    ),
    Toggle(
        name="mnrl",
        short="mnrl",
        label="Multiple Negatives Ranking",
        kind="loss_term",
        factory="trainables.minbert.extensions.mnrl:MultipleNegativesRanking",
        help="multiple-negatives ranking loss (Henderson et al. 2017) on positive Quora/STS pairs",
        options={
            "mnrl_weight": (
                float,
                Field(1.0, gt=0.0, description="weight of the ranking term in its task's loss"),
            ),
            "mnrl_scale": (
                float,
                Field(20.0, gt=0.0, description="scale (inverse temperature) of the cosines"),
            ),
            "mnrl_sts_threshold": (
                float,
                Field(
                    4.0,
                    ge=0.0,
                    le=5.0,
                    description="STS score (0-5) from which a pair is a positive",
                ),
            ),
        },
        requires={"model.pair_encoding": (("siamese",), "ranks sentence embeddings")},
    ),
    Toggle(
        name="smart",
        short="smart",
        label="SMART",
        kind="loss_term",
        factory="trainables.minbert.extensions.smart:Smart",
        help="SMART smoothness regularisation (Jiang et al. 2020) on perturbed embeddings",
        options={
            "smart_weight": (
                float,
                Field(
                    1.0, gt=0.0, description="weight of the smoothness term in each task's loss"
                ),
            ),
            "smart_noise_std": (
                float,
                Field(1e-5, ge=0.0, description="std of the initial embedding noise"),
            ),
            "smart_steps": (
                int,
                Field(1, ge=0, le=10, description="projected ascent steps on the perturbation"),
            ),
            "smart_step_size": (
                float,
                Field(1e-2, gt=0.0, description="ascent step size (per token, infinity norm)"),
            ),
            "smart_epsilon": (
                float,
                Field(1e-2, gt=0.0, description="radius of the perturbation's infinity-norm ball"),
            ),
        },
        requires={
            "train.deepspeed.zero_stage": (
                (0, 1, 2),
                "takes input gradients outside the engine's backward, untested under ZeRO-3",
            )
        },
    ),
    Toggle(
        name="llrd",
        short="llrd",
        label="Layer-wise LR Decay",
        kind="param_groups",
        factory="trainables.minbert.extensions.llrd:LayerwiseLrDecay",
        help="layer-wise learning-rate decay (Howard & Ruder 2018, Clark et al. 2020)",
        options={
            "llrd_decay": (
                float,
                Field(
                    0.9,
                    gt=0.0,
                    le=1.0,
                    description="lr factor per encoder layer down from the heads",
                ),
            )
        },
    ),
    Toggle(
        name="lr_schedule",
        short="schedule",
        label="LR Schedule",
        kind="lr_schedule",
        factory="trainables.minbert.extensions.lr_schedule:WarmupDecay",
        help="linear warm-up from 0, then linear or cosine decay to 0 (the BERT recipe)",
        options={
            "lr_schedule_warmup": (
                float,
                Field(0.1, ge=0.0, lt=1.0, description="share of the optimizer steps warming up"),
            ),
            "lr_schedule_decay": (
                Literal["linear", "cosine"],
                Field("linear", description="decay after the warm-up: linear or cosine"),
            ),
        },
    ),
    Toggle(
        name="task_layers",
        short="tasklayers",
        label="Task-specific Layers",
        kind="task_layers",
        factory="trainables.minbert.extensions.task_layers:TaskTopLayers",
        help="the top encoder layers copied once per task over a shared bottom (hard sharing)",
        options={
            "task_layers_count": (
                int,
                Field(
                    1,
                    ge=1,
                    description="top encoder layers each task gets its own copy of",
                ),
            )
        },
    ),
)


def _validate(toggles: tuple[Toggle, ...]) -> None:
    seen_names: dict[str, str] = {}
    seen_shorts: dict[str, str] = {}
    for t in toggles:
        where = f"extension toggle {t.name!r}"
        if not _NAME.match(t.name) or not _SHORT.match(t.short):
            raise ConfigError(f"{where}: name and short name must be lower_snake_case")
        if t.short in ("baseline", "all"):
            raise ConfigError(f"{where}: short name {t.short!r} is reserved; choose another")
        if t.kind not in KINDS:
            raise ConfigError(f"{where}: kind {t.kind!r} is not one of {', '.join(KINDS)}")
        if ":" not in t.factory:
            raise ConfigError(f"{where}: factory {t.factory!r} must be 'module:attribute'")
        for other in (t.name, *t.options):
            if other in seen_names:
                raise ConfigError(
                    f"{where}: config key extensions.{other} is already declared by "
                    f"{seen_names[other]!r}; rename one of them"
                )
            seen_names[other] = t.name
        if t.short in seen_shorts:
            raise ConfigError(
                f"{where}: short name {t.short!r} is already used by {seen_shorts[t.short]!r}"
            )
        seen_shorts[t.short] = t.name


def _discover() -> tuple[Toggle, ...]:
    found: list[Toggle] = []
    for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        try:
            toggle = ep.load()
        except Exception as exc:  # a broken plug-in must say which one
            raise ConfigError(
                f"extension plug-in {ep.name!r} ({ep.value}) failed to load: "
                f"{type(exc).__name__}: {exc}; fix or uninstall it"
            ) from None
        if not isinstance(toggle, Toggle):
            raise ConfigError(
                f"extension plug-in {ep.name!r} ({ep.value}) is a {type(toggle).__name__}, "
                "not a trainables.minbert.extensions.registry.Toggle"
            )
        found.append(toggle)
    return tuple(found)


@functools.cache
def toggles() -> tuple[Toggle, ...]:
    """Every registered toggle: the built-in ones in `BUILTIN` order, then plug-ins by name.

    Plug-ins are discovered on the first call (not at import, so that a plug-in module may
    import this one), then the list is fixed for the life of the process.
    """
    found = (*BUILTIN, *_discover())
    _validate(found)
    return found


def toggle_records() -> list[dict[str, str]]:
    """The registry as a sweep records it in experiment.json."""
    return [t.record() for t in toggles()]


def variant_name(flat: Mapping[str, Any]) -> str:
    """The name of a flat configuration's toggle combination.

    "baseline" with none on, the toggle's short name with one, short names joined by "+" in
    registry order with several, "all" with every toggle on (when there are two or more).
    """
    registered = toggles()
    on = [t.short for t in registered if flat.get(t.key) is True]
    if not on:
        return "baseline"
    if len(on) == len(registered) and len(on) > 1:
        return "all"
    return "+".join(on)


def check_combination(flat: Mapping[str, Any]) -> str | None:
    """None if the toggles that are on fit the rest of the flat configuration; else why not.

    Refuses two toggles of one kind that is not `STACKABLE` (two gradient surgeries, say) and
    a toggle whose `requires` the configuration does not meet.
    """
    on = [t for t in toggles() if flat.get(t.key) is True]
    for kind in KINDS:
        if kind in STACKABLE:
            continue
        same = [t.key for t in on if t.kind == kind]
        if len(same) > 1:
            return f"{' and '.join(same)} both replace the {kind} step: turn all but one off"
    for t in on:
        for key, (allowed, why) in t.requires.items():
            if key in flat and flat[key] not in allowed:
                if len(allowed) == 1:
                    fix = f"set {key}={allowed[0]}"
                else:
                    values = [str(v) for v in allowed]
                    fix = f"set {key} to {', '.join(values[:-1])} or {values[-1]},"
                return f"{t.key} {why}: {fix} or turn {t.name} off"
    return None


def load_factory(toggle: Toggle) -> Any:
    """The implementing class of `toggle`, imported now."""
    module, _, attr = toggle.factory.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"extension {toggle.name!r}: cannot import its class {toggle.factory!r} ({exc}); "
            "check the registry entry"
        ) from None


def active_toggle(kind: Kind, flat: Mapping[str, Any]) -> Toggle | None:
    """The toggle of `kind` that is on in a flat configuration, or None when none is.

    `check_combination` lets at most one toggle of a kind be on; the first in registry order
    is returned. For a `STACKABLE` kind use `active_toggles`.
    """
    return next((t for t in toggles() if t.kind == kind and flat.get(t.key) is True), None)


def build_active(kind: Kind, cfg: TrialConfig, interface: type) -> object | None:
    """The trial's implementation of `kind`: its toggle's class called with `cfg`, or None
    when no toggle of that kind is on (the caller then uses its default).

    The result is an instance of `interface` (callers narrow it with isinstance): ConfigError
    when the class makes something else (a plug-in registered under the wrong kind, say).
    """
    toggle = active_toggle(kind, cfg.to_flat_dict())
    if toggle is None:
        return None
    built: object = load_factory(toggle)(cfg)
    if not isinstance(built, interface):
        raise ConfigError(
            f"extension {toggle.name!r}: {toggle.factory} made a {type(built).__name__}, not "
            f"the {interface.__name__} its kind {toggle.kind!r} plugs into; fix its registry entry"
        )
    return built


def active_toggles(kind: Kind, flat: Mapping[str, Any]) -> list[Toggle]:
    """Every toggle of `kind` that is on in a flat configuration, in registry order."""
    return [t for t in toggles() if t.kind == kind and flat.get(t.key) is True]


def build_all_active(kind: Kind, cfg: TrialConfig, interface: type) -> list[object]:
    """The trial's implementations of a `STACKABLE` kind, in registry order (empty: none on).

    Each is its toggle's class called with `cfg`; ConfigError when one is not an instance of
    `interface`, as in `build_active`.
    """
    built_all: list[object] = []
    for toggle in active_toggles(kind, cfg.to_flat_dict()):
        built: object = load_factory(toggle)(cfg)
        if not isinstance(built, interface):
            raise ConfigError(
                f"extension {toggle.name!r}: {toggle.factory} made a {type(built).__name__}, "
                f"not the {interface.__name__} its kind {toggle.kind!r} plugs into; fix its "
                "registry entry"
            )
        built_all.append(built)
    return built_all
