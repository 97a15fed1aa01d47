"""The `Table` every report table returns, and how its cells are written.

A table keeps two views of the same numbers: `data` holds the exact values (its CSV file),
`display` the rounded strings a reader sees (Markdown, HTML, LaTeX); `notes` are footnotes.
The helpers below are the one place cells are formatted, so that every table rounds alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd  # pandas ships no types

from reports.stats import Spread

MISSING = "–"  # an en dash: the cell of a value that is not there


@dataclass
class Table:
    """One report table.

    Attributes:
        name: file stem of its CSV/TeX files (e.g. "table1_dev").
        title: caption.
        data: exact values, written to `<name>.csv`.
        display: rounded strings for reading; its index is shown as the first column.
        notes: footnotes, one sentence each.
    """

    name: str
    title: str
    data: pd.DataFrame
    display: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return bool(self.display.empty)


def finished_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The rows of trials whose status is "finished" (the only ones tables score)."""
    return trials[trials["status"] == "finished"]


# ---------------------------------------------------------------------------- cell text


def format_spread(spread: Spread, digits: int = 3) -> str:
    """ "0.520 ± 0.020 (n=3)", "0.504 (n=1)" or "–" (no value)."""
    if spread.n == 0:
        return MISSING
    if spread.n == 1:
        return f"{spread.mean:.{digits}f} (n=1)"
    return f"{spread.mean:.{digits}f} ± {spread.std:.{digits}f} (n={spread.n})"


def format_mean_std(spread: Spread, digits: int) -> str:
    """ "1429.0 ± 1.0", "1428.0" (one value) or "–" (none): a spread without its n."""
    if spread.n == 0:
        return MISSING
    if spread.n == 1:
        return f"{spread.mean:.{digits}f}"
    return f"{spread.mean:.{digits}f} ± {spread.std:.{digits}f}"


def format_hms(seconds: float) -> str:
    """3725.4 -> "1:02:05"; NaN -> "–"."""
    if not is_finite(seconds):
        return MISSING
    total = int(round(float(seconds)))
    return f"{total // 3600}:{total % 3600 // 60:02d}:{total % 60:02d}"


def format_score(value: Any, sign: bool = False) -> str:
    """A score rounded to 3 decimals ("0.520", "+0.100" with `sign`); "–" when not finite."""
    if not is_finite(value):
        return MISSING
    return f"{float(value):+.3f}" if sign else f"{float(value):.3f}"


def format_full(value: Any) -> str:
    """A score with every digit (for best_config.yaml's header); "n/a" when not finite."""
    return repr(float(value)) if is_finite(value) else "n/a"


def format_setting(value: Any, key: str) -> str:
    """A config value as a table shows it: rates in scientific notation, floats to 3 digits."""
    if key in ("train.lr", "train.weight_decay") and is_number(value):
        return f"{float(value):.2e}"
    if isinstance(value, float) and value.is_integer() and key == "train.epochs":
        return str(int(value))
    if isinstance(value, float):  # rounded for reading; the CSV keeps the exact value
        return f"{value:.3g}"
    return str(value)


def seed_text(value: Any) -> str:
    """Seeds come back as floats from a column with gaps: 2.0 -> "2"; missing -> "–"."""
    value = plain(value)
    if value is None:
        return MISSING
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# ---------------------------------------------------------------------------- values


def plain(value: Any) -> Any:
    """numpy scalars -> Python; NaN -> None."""
    if is_missing(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def is_missing(value: Any) -> bool:
    """None or NaN (what a DataFrame holds where a trial has no value)."""
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def is_number(value: Any) -> bool:
    """An int or float (Python or numpy), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def is_finite(value: Any) -> bool:
    """A number that is neither NaN nor infinite."""
    return is_number(value) and math.isfinite(float(value))


__all__ = [
    "MISSING",
    "Table",
    "finished_trials",
    "format_full",
    "format_hms",
    "format_mean_std",
    "format_score",
    "format_setting",
    "format_spread",
    "is_finite",
    "is_missing",
    "is_number",
    "plain",
    "seed_text",
]
