"""attrlens: explain the outputs of large language models.

Public API: :func:`explain`, :func:`explain_game`, :func:`load_model`, :class:`Attribution`,
:func:`list_methods`. Heavy libraries (torch, transformers) load only when a model is used.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import (
    AttrlensError,
    BackendError,
    CapabilityError,
    InputError,
    ParameterError,
)
from .result import Attribution


def __getattr__(name: str):
    if name in ("explain", "explain_game", "load_model"):
        from . import api

        return getattr(api, name)
    if name == "evaluate":
        from .evaluation.runner import evaluate

        return evaluate
    if name == "list_methods":
        from .registry import list_methods

        return list_methods
    raise AttributeError(f"module 'attrlens' has no attribute {name!r}")


__all__ = [
    "Attribution",
    "AttrlensError",
    "BackendError",
    "CapabilityError",
    "InputError",
    "ParameterError",
    "__version__",
    "evaluate",
    "explain",
    "explain_game",
    "list_methods",
    "load_model",
]
