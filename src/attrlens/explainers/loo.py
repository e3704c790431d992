"""Leave-one-out (occlusion): n + 1 evaluations, score_i = v(1) - v(1 - e_i)."""

from __future__ import annotations

from ..games import BudgetedGame
from ..registry import register
from ..solvers.sampling import loo_masks
from .base import Explainer, Explanation


@register
class LeaveOneOutExplainer(Explainer):
    """Occlusion: how much the value drops when one feature is removed."""

    draws = False

    name = "loo"
    description = "Leave-one-out occlusion: v(all) - v(all but i); n+1 evaluations."
    paper = "Zeiler & Fergus (2014), occlusion; Li et al. (2016), erasure"

    def min_budget(self, n_features: int) -> int:
        return n_features + 1

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        masks = loo_masks(game.n_features)
        values = game(masks)
        scores = values[0] - values[1:]
        pot = None
        if game.per_token:
            mat = game.per_token_values(masks)
            pot = mat[0][None, :] - mat[1:]
        return Explanation(scores=scores, per_output_token=pot,
                           extra={"full_value": float(values[0])})
