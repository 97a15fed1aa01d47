"""Variant names, display labels and column order, from the toggles a sweep recorded.

Every sweep writes its extension toggles to experiment.json, in registry order:

    "toggles": [{"key": "extensions.cosine_sts", "name": "cosine_sts", "short": "cosine",
                 "label": "Cosine"}, ...]

Reports read that list (`Results.toggles`) and nothing else: no toggle, short name or label
is written in this package, so an extension added as a plug-in shows up in a report with no
change here. An experiment recorded before the list existed has no toggles: its variants are
shown by name.

    from reports.variants import order_variants, variant_labels
    order_variants(["zeta", "all", "cosine", "baseline"], res.toggles)
    # -> ["baseline", "cosine", "all", "zeta"]
    variant_labels(["baseline", "pcgrad", "cosine+pcgrad"], res.toggles)
    # -> {"baseline": "Baseline", "pcgrad": "Gradient Surgery", "cosine+pcgrad": "cosine+pcgrad"}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd  # pandas ships no types

BASELINE = "baseline"
ALL = "all"
BASELINE_LABEL = "Baseline"
ALL_LABEL = "All Extensions"
JOIN = "+"


@dataclass(frozen=True)
class Toggle:
    """One extension toggle as experiment.json records it.

    Attributes:
        key: the flat config key that turns it on ("extensions.pcgrad").
        name: the key under `extensions.` ("pcgrad"); named in the configs and effects tables.
        short: its part of a variant name ("cosine" in "cosine+pcgrad").
        label: its name in report tables ("Gradient Surgery").
    """

    key: str
    name: str
    short: str
    label: str

    @classmethod
    def from_record(cls, record: object) -> Toggle | None:
        """The toggle an experiment.json entry describes; None if the entry is malformed."""
        if not isinstance(record, Mapping):
            return None
        fields = [record.get(f) for f in ("key", "name", "short", "label")]
        if not all(isinstance(f, str) and f for f in fields):
            return None
        key, name, short, label = (str(f) for f in fields)
        return cls(key=key, name=name, short=short, label=label)


def toggles_from_records(records: object) -> tuple[Toggle, ...] | None:
    """experiment.json's "toggles" list as `Toggle`s; None unless every entry is well formed."""
    if not isinstance(records, list):
        return None
    toggles = [Toggle.from_record(r) for r in records]
    if any(t is None for t in toggles):
        return None
    return tuple(t for t in toggles if t is not None)


def variant_name(config: Mapping[str, Any], toggles: Sequence[Toggle]) -> str:
    """The variant name of a flat config's toggle combination (for trials that record none).

    "baseline" with no toggle on, the toggle's short name with one, short names joined by "+"
    in `toggles` order with several, "all" with every toggle on (when there are two or more).
    """
    on = [t.short for t in toggles if config.get(t.key) is True]
    if not on:
        return BASELINE
    if len(on) == len(toggles) and len(on) > 1:
        return ALL
    return JOIN.join(on)


def variant_label(variant: str, toggles: Sequence[Toggle]) -> str:
    """A variant's column name: "Baseline", "All Extensions", a toggle's label ("pcgrad" ->
    "Gradient Surgery"), else the name itself (combinations such as "cosine+pcgrad" and
    user-chosen names are shown as they are named)."""
    variant = str(variant)
    if variant == BASELINE:
        return BASELINE_LABEL
    if variant == ALL:
        return ALL_LABEL
    toggle = _toggles_by_name(toggles).get(variant)
    return toggle.label if toggle is not None else variant


def order_variants(variants: Iterable[Any], toggles: Sequence[Toggle]) -> list[str]:
    """The reference report's column order: Baseline, the single toggles in `toggles` order,
    All Extensions, then every other variant (combinations, user-chosen names) a-z."""
    names = {str(v) for v in variants if isinstance(v, str) and v}
    by_name = _toggles_by_name(toggles)
    single = {t: rank for rank, t in enumerate(toggles, start=1)}
    last = len(toggles) + 2

    def rank(variant: str) -> tuple[int, str]:
        if variant == BASELINE:
            return (0, variant)
        if variant == ALL:
            return (last - 1, variant)
        toggle = by_name.get(variant)
        return (single[toggle] if toggle is not None else last, variant)

    return sorted(names, key=rank)


def variant_labels(variants: Sequence[str], toggles: Sequence[Toggle]) -> dict[str, str]:
    """Unique display labels; two variants with the same label keep their own names too."""
    labels = {v: variant_label(v, toggles) for v in variants}
    counts = pd.Series(list(labels.values())).value_counts()
    return {v: (f"{lab} ({v})" if counts[lab] > 1 else lab) for v, lab in labels.items()}


def _toggles_by_name(toggles: Sequence[Toggle]) -> dict[str, Toggle]:
    """Each toggle under its short name and its name (shorts win where the two collide)."""
    found = {t.short: t for t in toggles}
    for t in toggles:
        found.setdefault(t.name, t)
    return found


__all__ = [
    "ALL",
    "BASELINE",
    "Toggle",
    "order_variants",
    "toggles_from_records",
    "variant_label",
    "variant_labels",
    "variant_name",
]
