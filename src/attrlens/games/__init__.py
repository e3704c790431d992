"""Games: masks -> values, the only thing an explainer sees of a model.

``base``     Game (memoised, counted), BudgetedGame (the budget a method may spend), Cost
Typed games for model-based methods live beside it, one module per kind of value.
"""

from .base import BudgetedGame, BudgetExceededError, Cost, Game, as_game

__all__ = ["BudgetExceededError", "BudgetedGame", "Cost", "Game", "as_game"]
