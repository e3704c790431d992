"""Leave-one-out (occlusion): n + 1 evaluations, score_i = v(1) - v(1 - e_i)."""

from __future__ import annotations

import numpy as np

from ..game import Game
from .base import Explainer, Explanation, register


def loo_masks(n: int) -> np.ndarray:
    """(n + 1, n) masks: the full coalition, then each feature removed alone."""
    masks = np.ones((n + 1, n), dtype=bool)
    masks[np.arange(1, n + 1), np.arange(n)] = False
    return masks


@register
class LeaveOneOutExplainer(Explainer):
    """Occlusion: how much the value drops when one feature is removed."""

    name = "loo"
    description = "Leave-one-out occlusion: v(all) - v(all but i); n+1 evaluations."

    def min_budget(self, n_features: int) -> int:
        return n_features + 1

    def explain_game(self, game: Game, *, seed: int = 0) -> Explanation:
        n = game.n_features
        self.resolve_budget(n)
        masks = loo_masks(n)
        values = game(masks)
        scores = values[0] - values[1:]
        pot = None
        if game.per_token:
            mat = game.per_token_values(masks)
            pot = mat[0][None, :] - mat[1:]
        return Explanation(scores=scores, per_output_token=pot, extra={"full_value": float(values[0])})
