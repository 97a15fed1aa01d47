"""One entry of a search space's `parameters:`: its spec, checked, becomes a `Param`.

Also the small message helpers the space parser shares: a "did you mean" hint and why a YAML
value would change type on its way into the trial config (`1e-5` is text in YAML 1.1).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from hpsearch.space import Param, is_int, is_number, is_scalar, same_value
from trainables.errors import ConfigError

__all__ = [
    "SPEC_KEYS",
    "Fail",
    "a_kind",
    "did_you_mean",
    "failure",
    "parse_param",
    "text_number_hint",
    "type_problem",
]

SPEC_KEYS: dict[str, tuple[str, ...]] = {
    "float": ("type", "low", "high", "log", "step", "when"),
    "int": ("type", "low", "high", "log", "step", "when"),
    "categorical": ("type", "choices", "when"),
    "fixed": ("type", "value", "when"),
}

# How a parser turns (key, message) into the one-line error it raises.
Fail = Callable[[str, str], ConfigError]


def failure(path: Path) -> Fail:
    """The `Fail` of one file: "<path>: <key>: <message>"."""

    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{path}: {key}: {message}")

    return fail


def parse_param(fail: Fail, where: str, key: str, spec: Any) -> Param:
    """One `parameters:` entry: a plain value (fixed) or a spec mapping with a `type`."""
    if isinstance(spec, list):
        raise fail(
            where, "a list is not a parameter spec: write {type: categorical, choices: [...]}"
        )
    if not isinstance(spec, dict):
        return Param(key=key, kind="fixed", value=spec)
    kind = spec.get("type")
    if kind is None:
        raise fail(where, "missing 'type': one of float, int, categorical, fixed")
    if kind not in SPEC_KEYS:
        raise fail(
            f"{where}.type",
            f"unknown type {kind!r}"
            f"{did_you_mean(str(kind), SPEC_KEYS)}; use one "
            "of float, int, categorical, fixed",
        )
    for item in spec:
        if item not in SPEC_KEYS[kind]:
            raise fail(
                f"{where}.{item}",
                f"unknown key for a {kind} parameter; allowed: {', '.join(SPEC_KEYS[kind])}",
            )
    when = _when(fail, f"{where}.when", spec.get("when"))
    if kind == "fixed":
        if "value" not in spec:
            raise fail(where, "a fixed parameter needs 'value'")
        return Param(key=key, kind="fixed", value=spec["value"], when=when)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise fail(f"{where}.choices", "must be a non-empty list, e.g. [false, true]")
        for i, choice in enumerate(choices):
            if not is_scalar(choice):
                raise fail(f"{where}.choices", f"{choice!r} is not a single value")
            if any(same_value(choice, c) for c in choices[:i]):
                raise fail(f"{where}.choices", f"{choice!r} is listed twice")
        return Param(key=key, kind="categorical", choices=tuple(choices), when=when)
    return _range(fail, where, key, kind, spec, when)


def _range(
    fail: Fail,
    where: str,
    key: str,
    kind: str,
    spec: dict[str, Any],
    when: dict[str, tuple[Any, ...]] | None,
) -> Param:
    bounds = {}
    for end in ("low", "high"):
        if end not in spec:
            raise fail(where, f"a {kind} parameter needs 'low' and 'high'")
        value = spec[end]
        ok = is_int(value) if kind == "int" else is_number(value)
        if not ok:
            raise fail(
                f"{where}.{end}", f"{value!r} is not {a_kind(kind)}{text_number_hint(value)}"
            )
        bounds[end] = value if kind == "int" else float(value)
    low, high = bounds["low"], bounds["high"]
    if low >= high:
        raise fail(
            where,
            f"empty range: low ({low}) must be below high ({high}); for "
            "one value write it plainly (a fixed parameter)",
        )
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"{where}.log", "must be true or false")
    if log and low <= 0:
        raise fail(
            f"{where}.low",
            f"a log range must stay above zero (low is {low}): raise low or drop log",
        )
    step = spec.get("step")
    if step is not None:
        ok = is_int(step) if kind == "int" else is_number(step)
        if not ok or step <= 0:
            raise fail(f"{where}.step", f"must be a positive {kind}")
        if log:
            raise fail(f"{where}.step", "cannot be combined with log: drop one")
        steps = (high - low) / step
        if abs(steps - round(steps)) > 1e-9 * max(1.0, steps):
            raise fail(
                f"{where}.step",
                f"step {step} does not fit the range "
                f"{low}..{high}: high - low must be a multiple"
                " of step",
            )
        step = step if kind == "int" else float(step)
    return Param(
        key=key,
        kind="int" if kind == "int" else "float",
        low=low,
        high=high,
        log=log,
        step=step,
        when=when,
    )


def _when(fail: Fail, where: str, raw: Any) -> dict[str, tuple[Any, ...]] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw:
        raise fail(
            where,
            "must map an earlier parameter (or variant) to its value(s), "
            "e.g. {extensions.sequential_sts: true}",
        )
    when: dict[str, tuple[Any, ...]] = {}
    for ref, allowed in raw.items():
        values = allowed if isinstance(allowed, list) else [allowed]
        if not values or not all(is_scalar(v) for v in values):
            raise fail(f"{where}.{ref}", "give one value or a list of values")
        when[str(ref)] = tuple(values)
    return when


def a_kind(kind: str) -> str:
    return {"int": "an integer", "float": "a number"}.get(kind, kind)


def _yaml_float(value: float) -> str:
    """1e-06 -> "1.0e-06": the spelling YAML 1.1 (PyYAML) reads as a float."""
    mantissa, exponent = f"{value:e}".split("e")
    mantissa = mantissa.rstrip("0")
    return f"{mantissa}0e{exponent}" if mantissa.endswith(".") else f"{mantissa}e{exponent}"


def text_number_hint(value: Any) -> str:
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return ""
        if "e" not in value.lower() or not math.isfinite(number):
            return " but text: remove the quotes"
        return (
            f" but text: YAML reads {value} as a string; write {_yaml_float(number)} "
            "(a decimal point and a signed exponent)"
        )
    return ""


def type_problem(given: Any, resolved: Any) -> str | None:
    """Why a YAML value would change type on its way into TrialConfig (None: it would not)."""
    if given is None or isinstance(given, bool):
        ok = type(resolved) is type(given)
    elif isinstance(given, int):
        ok = type(resolved) in (int, float)  # an int is a fine float
    else:
        ok = type(resolved) is type(given)
    if ok:
        return None
    field_kind = {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "text",
        type(None): "null",
    }.get(type(resolved), type(resolved).__name__)
    hint = text_number_hint(given) or (
        "; for an integer field use type: int" if isinstance(given, float) else ""
    )
    return f"{given!r} is a {type(given).__name__} but the field takes {field_kind}{hint}"


def did_you_mean(word: str, options: Iterable[Any]) -> str:
    """ " (did you mean 'x'?)" for the closest option, or ""."""
    close = difflib.get_close_matches(word, sorted(str(o) for o in options), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
