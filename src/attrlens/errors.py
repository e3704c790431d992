"""Exception tree of attrlens.

    AttrlensError                 base of everything raised on purpose
    ├── InputError(ValueError)    the prompt, output, features or a file are unusable
    ├── ParameterError(ValueError) a method/CLI parameter is out of range or unknown
    ├── CapabilityError           a backend lacks what a method needs (e.g. teacher forcing)
    └── BackendError              a model or server failed (load error, HTTP failure, ...)
        └── ServerGoneError       the endpoint cannot be reached after all retries

Every message says what was wrong, what was expected, and how to fix it; the CLI prints
``str(error)`` on one line and exits with status 2 (input/parameter) or 3 (backend).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class AttrlensError(Exception):
    """Base class of all errors attrlens raises deliberately."""

    exit_code = 2


class InputError(AttrlensError, ValueError):
    """The user's input (prompt, output text, features, result file) cannot be used."""


class ParameterError(AttrlensError, ValueError):
    """A parameter is outside its valid range or names something unknown."""


class CapabilityError(AttrlensError):
    """A backend lacks a capability that the requested method needs."""

    exit_code = 3


class BackendError(AttrlensError):
    """A model backend or remote server failed."""

    exit_code = 3


class ServerGoneError(BackendError):
    """The remote endpoint could not be reached after every retry."""


def unknown_name_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """Message for an unknown name: lists the valid ones and suggests the closest."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown {kind} '{name}'. Valid {kind}s: {', '.join(valid)}.{hint}"


def check_param(
    owner: str,
    name: str,
    value: object,
    *,
    kind: type | tuple[type, ...] = (int, float),
    low: float | None = None,
    high: float | None = None,
    choices: Iterable[object] | None = None,
) -> None:
    """Validate one parameter; raise ParameterError with the house-style message.

    Message form: "The 'budget' parameter of LimeExplainer must be an int in the range
    [2, inf). Got 1 instead."
    """
    if choices is not None:
        choices = list(choices)
        if value not in choices:
            raise ParameterError(
                f"The '{name}' parameter of {owner} must be one of "
                f"{', '.join(repr(c) for c in choices)}. Got {value!r} instead."
            )
        return
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if ok and (low is not None and value < low or high is not None and value > high):
        ok = False
    if not ok:
        tname = " or ".join(k.__name__ for k in kinds)
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}]"
        raise ParameterError(
            f"The '{name}' parameter of {owner} must be {'an' if tname[0] in 'aeiou' else 'a'} "
            f"{tname} in the range [{lo}, {hi}. Got {value!r} instead."
        )
