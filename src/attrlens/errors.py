"""Exception tree of attrlens.

    AttrlensError                 base of everything raised on purpose
    ├── InputError(ValueError)    the prompt, output, features or a file are unusable
    ├── ParameterError(ValueError) a method/CLI parameter is out of range or unknown
    ├── CapabilityError           a backend lacks what a method needs (e.g. teacher forcing)
    └── BackendError              a model or server failed (load error, HTTP failure, ...)
        ├── ServerGoneError       the endpoint cannot be reached after all retries
        └── CacheDamagedError     the call cache file is damaged (delete it, or no cache)

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


class CacheDamagedError(BackendError):
    """The call cache file is damaged (not a database, malformed, undecodable rows).

    ``path``: the file; ``reason``: what SQLite or the decoder said."""

    def __init__(self, message: str, path: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


def unknown_name_message(kind: str, name: str, valid: Iterable[str]) -> str:
    """Message for an unknown name: lists the valid ones and suggests the closest (a value
    that is not a string at all is named with its type)."""
    valid = sorted(valid)
    plural = kind[:-1] + "ies" if kind.endswith("y") and kind[-2:-1] not in "aeiou" else kind + "s"
    if not isinstance(name, str):
        return (f"The {kind} must be a string, one of: {', '.join(valid)}; got "
                f"{type(name).__name__} {name!r}.")
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return f"Unknown {kind} '{name}'. Valid {plural}: {', '.join(valid)}.{hint}"
