"""LIME for text (Ribeiro et al. 2016): random removals, cosine-distance kernel, weighted ridge.

Each sample removes a uniformly drawn number d in [1, n-1] of features (a random subset);
the first sample is the unperturbed input. Locality weight of mask z:
    D(z) = 1 - cos(z, 1) = 1 - sqrt(|z| / n),   π(z) = sqrt(exp(-D(z)^2 / w^2)),  w = 0.25
(LIME's text default: distances x100 with width 25). Scores are the coefficients of a
weighted ridge regression with an unpenalised intercept (α = 1).
"""

from __future__ import annotations

import numpy as np

from ..games import BudgetedGame
from ..params import Param
from ..registry import register
from ..solvers.regression import weighted_r2, weighted_ridge
from .base import Explainer, Explanation


def lime_masks(n: int, n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_samples, n) LIME text masks, row 0 = all kept."""
    masks = np.ones((n_samples, n), dtype=bool)
    if n == 1:
        masks[1:] = False
        return masks
    n_removed = rng.integers(1, n, size=n_samples - 1)  # 1..n-1
    for r, d in enumerate(n_removed, start=1):
        masks[r, rng.choice(n, size=d, replace=False)] = False
    return masks


@register
class LimeExplainer(Explainer):
    """LIME with the text kernel; ``budget`` = number of distinct masks evaluated."""

    name = "lime"
    description = "LIME: random feature removals, cosine kernel, weighted ridge surrogate."
    paper = "Ribeiro et al. (2016), 'Why should I trust you?'"
    parameters = (
        Param("kernel_width", 0.25, "width of the exponential kernel on cosine distance",
              low=1e-9),
        Param("alpha", 1.0, "ridge penalty of the weighted linear surrogate", low=0),
    )

    def min_budget(self, n_features: int) -> int:
        return 2

    def default_budget(self, n_features: int) -> int:
        return int(min(512, max(64, 2 * n_features)))

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        n = game.n_features
        rng = np.random.default_rng(seed)
        # distinct masks only, so the budget bounds value-function evaluations exactly
        n_distinct = min(budget, 2**n) if n < 63 else budget
        masks = np.ones((1, n), dtype=bool)
        seen = {masks[0].tobytes()}
        tries = 0
        while len(masks) < n_distinct and tries < 50:
            cand = lime_masks(n, 2 * (n_distinct - len(masks)) + 1, rng)[1:]
            fresh = []
            for row in cand:
                k = row.tobytes()
                if k not in seen:
                    seen.add(k)
                    fresh.append(row)
                    if len(masks) + len(fresh) >= n_distinct:
                        break
            if fresh:
                masks = np.vstack([masks, np.asarray(fresh)])
            tries += 1
        y = game(masks)
        dist = 1.0 - np.sqrt(masks.sum(1) / n)
        w = np.sqrt(np.exp(-(dist**2) / self.params["kernel_width"] ** 2))
        coef, intercept = weighted_ridge(
            masks.astype(float), y, w, alpha=self.params["alpha"], fit_intercept=True
        )
        r2 = weighted_r2(y, masks.astype(float) @ coef + intercept, w)
        return Explanation(
            scores=coef,
            extra={"intercept": float(intercept), "fit_r2_weighted": float(r2),
                   "n_samples": len(masks)},
        )
