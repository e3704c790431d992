"""Explainer base class: declared parameters and the one ``explain`` every method runs through.

Adding a method = one class in one module, decorated with :func:`attrlens.registry.register`:

    @register
    class MyExplainer(Explainer):
        name = "mine"
        description = "One line for `attrlens methods`."
        paper = "Author et al. (2025), Title"
        parameters = (Param("alpha", 1.0, "ridge penalty", low=0),)

        def min_budget(self, n_features): return n_features + 1

        def _explain(self, game, *, budget, seed):
            ...  # ask game(masks) for at most `budget` distinct masks
            return Explanation(scores=...)

``__init__`` stores parameters as given (unknown names are refused at once); the base
class's :meth:`Explainer.explain` validates them against the declarations, resolves the
budget, wraps the game so the budget is enforced, runs the method with the seed and fills
in the cost. Subclasses may not override ``explain``.
"""

from __future__ import annotations

import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import InputError, ParameterError
from ..games import BudgetedGame, Cost, Game
from ..params import Param, check_unknown, validate
from ..registry import register  # noqa: F401  (re-exported for method modules)

if TYPE_CHECKING:
    from ..games.model import ModelInputs, ScoringGame
    from ..models.openai import OpenAIBackend

#: what a method needs to run: any value function, a local model (teacher forcing, beams,
#: internals), or a closed (served) model whose output is explained
NEEDS = ("game", "local_model", "closed_model")

BUDGET = Param(
    "budget", None,
    "maximum number of value-function evaluations (model or surrogate); default: the method's",
    type=int, low=1, none_ok=True,
)


@dataclass
class Explanation:
    """What an explainer returns; the API turns it into an :class:`Attribution`."""

    scores: np.ndarray
    interactions: dict[str, Any] | None = None
    per_output_token: np.ndarray | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    cost: Cost = field(default_factory=Cost)


class Explainer(ABC):
    """Base class of every method. Subclasses declare ``parameters`` and implement
    ``_explain``; model-based methods also implement ``make_game``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    paper: ClassVar[str] = ""
    needs: ClassVar[str] = "game"
    #: declared parameters (``budget`` is added by the base class when ``uses_budget``)
    parameters: ClassVar[tuple[Param, ...]] = ()
    #: False for methods whose cost is fixed by the input (e.g. gradients): then a budget is
    #: refused as meaningless
    uses_budget: ClassVar[bool] = True
    default_masker: ClassVar[str] = "delete"
    default_target: ClassVar[str] = "nll"
    #: which of explain()'s scoring settings the method's values depend on: "target" (the
    #: target, its reduction, a contrast) and "masker"; a setting it does not read is
    #: refused when given and left out of its results
    reads: ClassVar[tuple[str, ...]] = ("target", "masker")
    #: False for a method whose value does not depend on the explained output (GiLOT: the
    #: model's own beam distributions); a given output is then refused, not recorded as
    #: the output its scores explain
    explains_output: ClassVar[bool] = True
    #: False for a method that never runs the scoring engine on masked prompts (gradients
    #: and attention of one forward): its settings (prefix_reuse) are refused when given
    runs_engine: ClassVar[bool] = True
    #: False for a method that draws nothing at random (leave-one-out, GiLOT, gradients,
    #: attention): a seed changes none of its scores, and the command line says so when one
    #: is given
    draws: ClassVar[bool] = True
    #: True for a method that has the model generate answers to perturbed prompts (gsmile):
    #: max_new_tokens limits those even where the explained output is given
    regenerates: ClassVar[bool] = False
    #: explain()'s options that set each of those (evaluate's records keep all of theirs:
    #: its metrics read them whatever the method reads)
    SETTING_OF: ClassVar[dict[str, str]] = {
        "target": "target", "reduction": "target", "contrast": "target", "masker": "masker"}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "explain" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides Explainer.explain; implement _explain instead so "
                f"parameters, budget and seed are handled in one place."
            )
        if cls.needs not in NEEDS:
            raise TypeError(f"{cls.__name__}.needs must be one of {NEEDS}; got {cls.needs!r}.")
        names = [p.name for p in cls.parameters]
        if len(set(names)) != len(names) or "budget" in names:
            raise TypeError(f"{cls.__name__} declares a parameter twice (or 'budget').")

    def __init__(self, **params: Any):
        self._check_names(params)
        self.params: dict[str, Any] = {p.name: params.get(p.name, p.default)
                                       for p in self.all_parameters()}

    # ---- declarations --------------------------------------------------------------------
    @classmethod
    def all_parameters(cls) -> tuple[Param, ...]:
        return ((BUDGET,) if cls.uses_budget else ()) + tuple(cls.parameters)

    @classmethod
    def ignores(cls, option: str) -> bool:
        """Whether the option ``option`` sets a scoring setting this method does not read
        (False for every other option)."""
        setting = cls.SETTING_OF.get(option)
        return setting is not None and setting not in cls.reads

    @classmethod
    def owner(cls) -> str:
        return cls.__name__

    @classmethod
    def _check_names(cls, params: dict[str, Any]) -> None:
        if not cls.uses_budget and params.get("budget") is not None:
            raise ParameterError(
                f"The method '{cls.name}' takes no budget: its cost is fixed by the input "
                f"(drop --budget)."
            )
        given = [k for k in params if not (k == "budget" and not cls.uses_budget)]
        check_unknown(f"Method '{cls.name}'", given, cls.all_parameters())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    def get_params(self) -> dict[str, Any]:
        """Every declared parameter's value (given or default)."""
        return dict(self.params)

    @property
    def budget(self) -> int | None:
        return self.params.get("budget")

    # ---- hooks ---------------------------------------------------------------------------
    def min_budget(self, n_features: int) -> int:
        """The fewest evaluations the method can work with on n features."""
        return 1

    def default_budget(self, n_features: int) -> int:
        return self.min_budget(n_features)

    def check_params(self) -> None:
        """Checks across parameters that need no feature count (optional): run before the
        model loads (the command line's ``make_checked_explainer``) and in :meth:`validate`."""

    def check(self, n_features: int) -> None:
        """Checks that involve the number of features (optional)."""

    def make_game(
        self, inputs: ModelInputs, scoring: ScoringGame, *, closed: OpenAIBackend | None = None
    ) -> Game:
        """The game this method runs on for one prepared model input.

        Game-based methods run on ``scoring`` (teacher-forced target values of the fixed
        output); model-based methods override this and build their typed game from
        ``inputs`` (and the closed model ``closed`` whose output is explained)."""
        return scoring

    @abstractmethod
    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        """The method itself: at most ``budget`` distinct masks from ``game``."""

    # ---- the one entry point -------------------------------------------------------------
    def validate(self, n_features: int) -> dict[str, Any]:
        """Check every parameter against its declaration (ParameterError otherwise); the
        normalised values become ``self.params``."""
        self._check_names(self.params)
        self.params = validate(self.owner(), self.params, self.all_parameters())
        self.check_params()
        self.check(n_features)
        return self.params

    def resolve_budget(self, n_features: int) -> int | None:
        """The budget to use: the given one (checked against the method's minimum) or the
        method's default. None for methods that take no budget."""
        if not self.uses_budget:
            return None
        need = self.min_budget(n_features)
        if self.budget is None:
            return int(max(need, self.default_budget(n_features)))
        if self.budget < need:
            raise ParameterError(
                f"The budget {self.budget} is too small for {self.name} with {n_features} "
                f"features: it needs at least {need} evaluations. Raise --budget to {need} "
                f"or more ({self.name}:budget={need} in evaluate's --methods)."
            )
        return int(self.budget)

    def explain(self, game: Game, *, seed: int = 0) -> Explanation:
        """Validate -> resolve the budget -> enforce it on the game -> run -> cost."""
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise ParameterError(f"The seed must be an int >= 0. Got {seed!r} instead.")
        n = game.n_features
        self.validate(n)
        budget = self.resolve_budget(n)
        view = BudgetedGame(game, budget, owner=f"method '{self.name}'")
        before = game.cost()
        t0 = time.perf_counter()
        exp = self._explain(view, budget=budget, seed=int(seed))
        if not np.all(np.isfinite(np.asarray(exp.scores, dtype=float))):
            # (games refuse non-finite values; gradients and attention maps come here)
            raise InputError(
                f"The method '{self.name}' gave NaN or inf scores: {game.nonfinite_hint}.")
        wall = time.perf_counter() - t0
        cost = game.cost() - before
        cost.value_calls = view.n_calls
        cost.wall_s = wall
        exp.cost = cost
        if budget is not None and n < 63:
            budget = min(budget, 2**n)  # recorded as every method does: never more than 2^n
        exp.params = {**self.params, "budget": budget, **exp.params} if self.uses_budget else {
            **self.params, **exp.params}
        return exp


def warn_underdetermined(method: str, determined: int, total: int, evaluations: int,
                         suggest: int) -> None:
    """Warn that a regression's coalitions determine only ``determined`` of its ``total``
    coefficients (a rank-deficient design: too few coalitions, or dependent ones), so the
    scores are partly the solver's choice (the least-norm or ridge solution) and not the
    game's; say which budget to try."""
    warnings.warn(
        f"{method}'s {evaluations} coalitions determine only {determined} of its {total} "
        f"coefficients (too few, or dependent, coalitions): the scores are partly the "
        f"solver's choice, not the game's; raise --budget (e.g. to {suggest}).",
        stacklevel=3)
