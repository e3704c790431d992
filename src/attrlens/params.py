"""Declared parameters: one declaration per method parameter, validated in one place.

A method lists its parameters once as :class:`Param` objects (name, constraint, default,
one-line help), in the spirit of scikit-learn's ``_parameter_constraints``. The same
declarations validate values when the work runs (one message format), refuse unknown names
(listing the valid ones), generate the CLI's method options and help, and produce invalid
values for the generated contract tests.

Message form: "The 'budget' parameter of LimeExplainer must be an int in the range
[2, inf). Got 1 instead."
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ParameterError, unknown_name_message

_TYPE_NAMES = {int: "int", float: "float", str: "str", bool: "bool"}


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _number(x: float) -> str:
    """A bound as written: whole numbers in full (4294967295, not 4.29497e+09)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else f"{x:g}"


@dataclass(frozen=True)
class Param:
    """One declared parameter.

    name:     the keyword (also the CLI option ``--name`` with ``_`` -> ``-``)
    default:  the value used when the parameter is not given
    help:     one line for ``attrlens methods NAME`` and ``--help``
    type:     int | float | str | bool (float accepts ints too)
    low, high: inclusive bounds for numbers (None = unbounded)
    choices:  the allowed values (type/bounds are then not checked)
    none_ok:  None is a valid value (e.g. "choose automatically")
    cli:      offered as a CLI option (False for values a terminal cannot express)
    """

    name: str
    default: Any
    help: str
    type: type = float
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    none_ok: bool = False
    cli: bool = True

    # ---- validation ----------------------------------------------------------------------
    def describe(self) -> str:
        """The constraint in words: "an int in the range [1, inf)", "one of 'a', 'b'"."""
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.type is bool:
            text = "a bool"
        elif self.type is str:
            text = "a str"
        else:
            tname = _TYPE_NAMES.get(self.type, self.type.__name__)
            lo = "-inf" if self.low is None else _number(self.low)
            hi = "inf)" if self.high is None else _number(self.high) + "]"
            text = f"{_article(tname)} {tname} in the range [{lo}, {hi}"
        return text + (" or None" if self.none_ok else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.none_ok
        if self.choices is not None:
            # True == 1 in Python; a bool only matches a bool choice and vice versa
            return any(value == c and isinstance(value, bool) == isinstance(c, bool)
                       for c in self.choices)
        if self.type is bool:
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.type is int:
            ok = isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, float))
        elif self.type is float:
            ok = isinstance(value, (int, float)) or _is_numpy_number(value)
            if ok and not math.isfinite(float(value)):
                return False
        else:
            ok = isinstance(value, self.type)
        if not ok:
            return False
        if self.low is not None and value < self.low:
            return False
        return not (self.high is not None and value > self.high)

    def check(self, owner: str, value: Any) -> Any:
        """The value, normalised (numpy numbers -> Python); ParameterError if invalid."""
        if not self.accepts(value):
            raise ParameterError(
                f"The '{self.name}' parameter of {owner} must be {self.describe()}. "
                f"Got {value!r} instead."
            )
        if value is None or self.choices is not None:
            return value
        if self.type is int:
            return int(value)
        if self.type is float:
            return float(value)
        return value

    # ---- generated tests -----------------------------------------------------------------
    def invalid_values(self) -> list[Any]:
        """Values this declaration must refuse (used by the generated contract suite)."""
        bad: list[Any] = [] if self.none_ok else [None]
        if self.choices is not None:
            bad.append("__not_a_choice__")
            return bad
        if self.type is bool:
            return bad + ["yes", 2]
        if self.type is str:
            return bad + [3.5]
        bad.append("not-a-number")
        if self.type is int:
            bad.append(1.5)
        if self.low is not None:
            bad.append(self.low - (1 if self.type is int else max(abs(self.low) * 0.5, 1e-3)))
        if self.high is not None:
            bad.append(self.high + (1 if self.type is int else max(abs(self.high) * 0.5, 1e-3)))
        if self.type is float:
            bad.append(float("nan"))
        return bad

    # ---- CLI -----------------------------------------------------------------------------
    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def parse_cli(self, text: str) -> Any:
        """A CLI string -> the declared type ('none' -> None where allowed)."""
        if self.none_ok and text.lower() == "none":
            return None
        if self.choices is not None:
            for c in self.choices:
                if str(c) == text:
                    return c
            return text  # refused later by check(), with the valid choices listed
        if self.type is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            return text
        if self.type in (int, float):
            try:
                return int(text) if self.type is int else float(text)
            except ValueError:
                return text
        return text


def _is_numpy_number(value: Any) -> bool:
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, (np.integer, np.floating)) and not isinstance(value, np.bool_)


def check_unknown(owner: str, given: Iterable[str], declared: Sequence[Param]) -> None:
    """Refuse parameter names that are not declared (lists the valid ones)."""
    names = [p.name for p in declared]
    for key in given:
        if key not in names:
            msg = unknown_name_message("parameter", key, names) if names else (
                f"Unknown parameter '{key}'."
            )
            if not names:
                msg += " This method takes no parameters."
            raise ParameterError(f"{owner}: {msg}")


def validate(owner: str, values: Mapping[str, Any], declared: Sequence[Param]) -> dict[str, Any]:
    """Every declared parameter's value (given or default), checked and normalised."""
    check_unknown(owner, values, declared)
    out: dict[str, Any] = {}
    for p in declared:
        out[p.name] = p.check(owner, values.get(p.name, p.default))
    return out


#: the largest seed: numpy's RandomState and scikit-learn's random_state take 32-bit seeds
SEED_MAX = 2**32 - 1


def check_seed(owner: str, seed: object) -> int:
    """A random seed: an int in [0, 2**32 - 1] (the range every generator attrlens seeds
    accepts), as a Python int."""
    return check_param(owner, "seed", seed, kind=int, low=0, high=SEED_MAX)


def check_param(
    owner: str,
    name: str,
    value: object,
    *,
    kind: type | tuple[type, ...] = float,
    low: float | None = None,
    high: float | None = None,
    choices: Iterable[object] | None = None,
    none_ok: bool = False,
) -> Any:
    """Check one value that is not a method's declared parameter (e.g. ``seed`` of
    ``attrlens.explain``) with the same rules and message as a declaration."""
    if isinstance(kind, tuple):
        kind = float if float in kind else kind[0]
    decl = Param(name, None, "", type=kind, low=low, high=high,
                 choices=tuple(choices) if choices is not None else None, none_ok=none_ok)
    return decl.check(owner, value)
