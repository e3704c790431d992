"""Explainer base class, the method registry and the context explainers run in.

Adding a method = one module with one class decorated by :func:`register`. Parameters are
stored as given in ``__init__`` and validated when the work runs (``explain``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import ParameterError, check_param, unknown_name_message
from ..game import Game

REGISTRY: dict[str, type["Explainer"]] = {}

# modules holding registered explainers; imported on first registry access
_MODULES = (
    "loo",
    "lime",
    "shapley",
    "spex",
    "gilot",
    "rope_lime",
    "gsmile",
    "gradients",
)


def register(cls: type["Explainer"]) -> type["Explainer"]:
    """Class decorator: add an explainer to the registry under ``cls.name``."""
    REGISTRY[cls.name] = cls
    return cls


def _load_all() -> None:
    for mod in _MODULES:
        try:
            importlib.import_module(f"{__package__}.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__package__}.{mod}":
                raise


def get_explainer(name: str) -> type["Explainer"]:
    """The explainer class registered as ``name`` (clear error listing the valid names)."""
    _load_all()
    if name not in REGISTRY:
        raise ParameterError(unknown_name_message("method", name, REGISTRY))
    return REGISTRY[name]


def list_methods() -> dict[str, str]:
    """{name: one-line description} of every registered method."""
    _load_all()
    return {k: REGISTRY[k].description for k in sorted(REGISTRY)}


@dataclass
class Explanation:
    """What an explainer returns; the API turns it into an :class:`Attribution`."""

    scores: np.ndarray
    interactions: dict[str, Any] | None = None
    per_output_token: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExplainContext:
    """Everything an explainer may need about one explanation of one model output.

    Game-based explainers only use ``game`` and ``seed``; model-based ones (GiLOT, RoPE-LIME,
    gSMILE, gradients) use the model, prompt, features and maskers directly.
    """

    game: Game
    seed: int
    model: Any = None
    prompt: Any = None
    prompt_ids: np.ndarray | None = None
    offsets: list[tuple[int, int]] | None = None
    features: Any = None
    output_ids: np.ndarray | None = None
    output_text: str = ""
    masker: Any = None
    engine: Any = None
    target: Any = None
    target_backend: Any = None
    progress: Any = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return self.game.n_features


class Explainer:
    """Base class. Subclasses set ``name``/``description`` and implement ``explain_game``
    (game-based) or override ``explain_context`` (model-based)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_model: ClassVar[bool] = False
    needs_closed_model: ClassVar[bool] = False
    default_masker: ClassVar[str] = "delete"
    default_target: ClassVar[str] = "nll"

    def __init__(self, *, budget: int | None = None, **params: Any):
        self.budget = budget
        self.params = params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def get_params(self) -> dict[str, Any]:
        return {"budget": self.budget, **self.params}

    # ---- budget --------------------------------------------------------------------------
    def min_budget(self, n_features: int) -> int:
        return 1

    def default_budget(self, n_features: int) -> int:
        return self.min_budget(n_features)

    def resolve_budget(self, n_features: int) -> int:
        """The budget to use: the given one (validated) or the method's default."""
        need = self.min_budget(n_features)
        if self.budget is None:
            return max(need, self.default_budget(n_features))
        check_param(type(self).__name__, "budget", self.budget, kind=int, low=1)
        if self.budget < need:
            raise ParameterError(
                f"The budget {self.budget} is too small for {self.name} with {n_features} "
                f"features: it needs at least {need} evaluations. Raise --budget to {need} "
                f"or more."
            )
        return int(self.budget)

    def validate(self, n_features: int) -> None:
        """Check parameters (raise ParameterError); subclasses extend."""

    # ---- work ----------------------------------------------------------------------------
    def explain_game(self, game: Game, *, seed: int = 0) -> Explanation:  # pragma: no cover
        raise ParameterError(f"The method '{self.name}' needs a model, not a bare game.")

    def explain_context(self, ctx: ExplainContext) -> Explanation:
        return self.explain_game(ctx.game, seed=ctx.seed)
