"""LIME for text (Ribeiro et al. 2016), as the reference ``LimeTextExplainer`` does it.

Samples (``variant="lime_text"``, the reference): row 0 is the original; each of the other
``num_samples - 1`` rows removes d features, d uniform in 1..n, a uniform d-subset, drawn
with replacement (rows may repeat). Locality weight of a mask z with |z| kept features:

    D(z) = 100 * cosine_distance(z, 1) = 100 (1 - sqrt(|z| / n))
    π(z) = sqrt(exp(-D(z)^2 / w^2)),  w = kernel_width = 25

Scores are the coefficients of ``Ridge(alpha=1)`` (intercept unpenalised) fitted with
sample weights π on the binary masks (scikit-learn, as the reference; every feature is
kept in the surrogate, i.e. the reference with ``num_features = n``).

Budget: ``budget`` bounds distinct value-function evaluations; repeated rows are memo hits
and cost nothing. The samples are the first rows of the reference's ``num_samples``-row
draw, as many as fit in ``budget`` distinct masks: all ``num_samples`` rows when they hold
at most ``budget`` distinct masks (always so with the default budget, ``min(num_samples,
2^n)``), else the longest leading part that does (recorded as ``n_samples``).

``variant="distinct"`` is the estimator of attrlens <= 0.1: d uniform in 1..n-1, no row
repeats, ``min(num_samples, budget)`` distinct rows (default budget ``min(512, max(64,
2n))``), the same kernel and fit.
"""

from __future__ import annotations

import numpy as np

from ..games import BudgetedGame
from ..params import Param
from ..registry import register
from ..solvers.kernels import LocalityKernel, WidthParam, lime_text_distances
from ..solvers.regression import design_rank, weighted_r2, weighted_ridge
from ..solvers.sampling import LIME_VARIANTS, lime_masks
from .base import Explainer, Explanation, warn_underdetermined


@register
class LimeExplainer(Explainer):
    """LIME with the text kernel; ``budget`` = distinct masks evaluated (repeats are free)."""

    name = "lime"
    description = "LIME-text: random feature removals, cosine kernel, weighted ridge surrogate."
    paper = "Ribeiro et al. (2016), 'Why should I trust you?'"
    parameters = (
        Param("num_samples", 5000, "samples drawn (with repeats), the original included",
              type=int, low=2),
        WidthParam("kernel_width", 25.0,
                   "width of the exponential kernel on 100 x cosine distance (or 'median')"),
        Param("alpha", 1.0, "ridge penalty of the weighted linear surrogate", low=0),
        Param("variant", "lime_text",
              "'lime_text' (the reference: 1..n removed, with repeats) or 'distinct' "
              "(1..n-1 removed, no repeats)", type=str, choices=LIME_VARIANTS),
    )

    def min_budget(self, n_features: int) -> int:
        return 2

    def check(self, n_features: int) -> None:
        from .shapley import check_plan_memory

        # every sample is drawn, kept and weighted, repeats included (num_samples=10**12
        # ran for minutes without a word before running out of memory)
        check_plan_memory(f"The method '{self.name}'", n_features, self.params["num_samples"],
                          2.0 * n_features + 64.0, what="--num-samples")

    def default_budget(self, n_features: int) -> int:
        if self.params["variant"] == "distinct":
            return int(min(512, max(64, 2 * n_features)))
        cap = 2**n_features if n_features < 62 else self.params["num_samples"]
        return int(min(self.params["num_samples"], cap))

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        n = game.n_features
        p = self.params
        limit = int(budget) if budget is not None else p["num_samples"]
        masks = lime_masks(n, p["num_samples"], seed=seed, variant=p["variant"],
                           max_distinct=limit)
        y = game(masks)
        kernel = LocalityKernel(p["kernel_width"])
        w, width = kernel(lime_text_distances(masks))
        X = masks.astype(np.float64)
        coef, intercept = weighted_ridge(X, y, w, alpha=p["alpha"], fit_intercept=True)
        rank = design_rank(X[w > 0])
        if rank is not None and rank < n:
            warn_underdetermined(self.name, rank, n, len(masks), 2 * (n + 1))
        r2 = weighted_r2(y, X @ coef + intercept, w)
        return Explanation(
            scores=coef,
            extra={"intercept": float(intercept), "fit_r2_weighted": float(r2),
                   "n_samples": len(masks),
                   "n_distinct": len({r.tobytes() for r in masks})},
            params={"kernel_width_effective": width, "distance": "100 x cosine",
                    **kernel.describe()},
        )
