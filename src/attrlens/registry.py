"""The method registry: one class per method, registered where it is defined.

Adding a method = one class in one module of ``attrlens.explainers``, decorated with
:func:`register`; list the module in ``MODULES`` if it is a new module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import ParameterError, unknown_name_message

if TYPE_CHECKING:
    from .explainers.base import Explainer

REGISTRY: dict[str, type[Explainer]] = {}

# modules of attrlens.explainers holding registered methods; imported on first access
MODULES = ("loo", "lime", "shapley", "spex", "gilot", "rope_lime", "gsmile", "gradients")


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator: add an explainer to the registry under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name to register under.")
    if cls.name in REGISTRY and REGISTRY[cls.name] is not cls:
        raise TypeError(f"Two methods are registered as '{cls.name}'.")
    REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in MODULES:
        importlib.import_module(f"attrlens.explainers.{mod}")


def get_explainer(name: str) -> type[Explainer]:
    """The explainer class registered as ``name`` (clear error listing the valid names)."""
    _load_all()
    if not isinstance(name, str) or name not in REGISTRY:
        raise ParameterError(unknown_name_message("method", str(name), REGISTRY))
    return REGISTRY[name]


def list_methods() -> dict[str, str]:
    """{name: one-line description} of every registered method."""
    _load_all()
    return {k: REGISTRY[k].description for k in sorted(REGISTRY)}
