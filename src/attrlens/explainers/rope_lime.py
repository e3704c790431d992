"""RoPE-LIME (Picov & Goru, arXiv 2602.06275): explain a closed model's output with an open
RoPE surrogate, Sparse-K perturbations and a RoPE-space RWMD locality kernel.

The closed model is called once for its output o (by the API; zero calls when o is given).
Every perturbation is then scored by the open surrogate S on that fixed o (METHODS §1):

    masks      Sparse-K: each sample removes exactly K features (uniform K-subsets, no
               repeats; all of them when B >= C(n, K)), plus the unperturbed prompt.
               K = 1 with B = n is leave-one-out. (``budget`` = B + 1 evaluations.)
    y(z)       the game's value: -mean NLL of o under S given x(z) (or -KL/-JS/-TV against
               the unmasked run); higher = o better supported.
    D(z)       RWMD (Kusner et al. 2015) between the bags of RoPE vectors of the feature
               tokens of x and of x(z), at their original positions, ground cost 1 - cos
               (solvers.rwmd.rwmd_many).
    π(z)       sqrt(exp(-D(z)^2 / σ^2)), σ = 0.25 (π(1) = 1); 'median' is the one rule of
               solvers.kernels (median of the positive distances).
    fit        weighted ridge  min Σ π (y - β0 - βᵀz)^2 + α|β|^2, α = 1, intercept free.
    scores     β (= -β of the NLL regression: positive = keeping the feature supports o).

The scores come from a :class:`~attrlens.games.surrogate.LocalityGame` (the surrogate's
teacher-forced scoring game plus ``locality(masks)``), built by ``make_game``; ``budget``
bounds surrogate scorings (API calls: only the one for o, made by the API).

The paper's body could not be read; every [R] resolution of METHODS §1 is a parameter of
this class and is recorded in the result's params.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, ParameterError
from ..games import BudgetedGame, Game
from ..models.embeddings import ROPE_SPACES
from ..params import Param
from ..registry import register
from ..solvers.kernels import LocalityKernel, WidthParam
from ..solvers.regression import design_rank, weighted_r2, weighted_ridge
from ..solvers.sampling import sparse_k_masks
from .base import Explainer, Explanation, warn_underdetermined

if TYPE_CHECKING:
    from ..games.model import ModelInputs, ScoringGame
    from ..models.openai import OpenAIBackend

SAMPLINGS = ("exact", "balanced", "up_to_k")
COSTS = ("cosine", "euclidean")
SOLVERS = ("ridge", "ols")


@register
class RopeLimeExplainer(Explainer):
    """RoPE-LIME. ``budget`` = surrogate evaluations, the unperturbed prompt included (the
    house convention), i.e. METHODS' B = budget - 1 Sparse-K samples; K = 1 with budget
    n + 1 is leave-one-out. Default min(512, max(64, 2n)). [R] = our resolution, METHODS §1.
    """

    name = "rope_lime"
    description = (
        "RoPE-LIME: one closed-model call, Sparse-K perturbations scored by an open RoPE "
        "surrogate, RoPE-space RWMD kernel, weighted ridge."
    )
    paper = "Picov & Goru (2026), RoPE-LIME, arXiv 2602.06275"
    needs = "local_model"
    default_masker = "delete"
    default_target = "nll"
    parameters = (
        Param("k", 3, "features removed per sample (Sparse-K) [R: 3]; clipped to n-1",
              type=int, low=1),
        Param("sampling", "exact",
              "'exact' (uniform K-subsets), 'balanced' (features removed equally often) or "
              "'up_to_k' (size uniform in 1..K)", type=str, choices=SAMPLINGS),
        Param("space", "embed_rope", "RoPE space of the token vectors of the RWMD kernel",
              type=str, choices=ROPE_SPACES),
        Param("ground_cost", "cosine", "RWMD ground cost between token vectors",
              type=str, choices=COSTS),
        WidthParam("kernel_width", 0.25, "width σ of the RWMD locality kernel (or 'median')"),
        Param("alpha", 1.0, "ridge penalty (intercept unpenalised)", low=0),
        Param("solver", "ridge", "weighted surrogate: 'ridge' or 'ols'", type=str,
              choices=SOLVERS),
        Param("rwmd_filter_quantile", None,
              "keep only masks with D(z) at most this quantile of a pilot draw (None = off)",
              low=1e-9, high=1.0, none_ok=True),
        Param("return_samples", False, "put the masks, values and weights in the metadata",
              type=bool, cli=False),
    )

    def min_budget(self, n_features: int) -> int:
        return 2  # the unperturbed prompt and one Sparse-K sample

    def default_budget(self, n_features: int) -> int:
        return int(min(512, max(64, 2 * n_features)))

    def check(self, n_features: int) -> None:
        if n_features < 2:
            raise InputError(
                "RoPE-LIME needs at least 2 features to perturb; use a finer granularity "
                "(e.g. --granularity word)."
            )

    def make_game(
        self, inputs: ModelInputs, scoring: ScoringGame, *, closed: OpenAIBackend | None = None
    ) -> Game:
        """The surrogate's scoring game plus the RoPE-space RWMD locality (``closed`` only
        produced the explained output, in the API)."""
        from ..games.surrogate import LocalityGame

        return LocalityGame(scoring, space=self.params["space"],
                            ground_cost=self.params["ground_cost"])

    # -- pieces, usable on their own ----------------------------------------------------------
    def sample_masks(self, n: int, budget: int, seed: int) -> np.ndarray:
        """(m, n) distinct Sparse-K masks, row 0 = the unperturbed prompt; m <= budget
        (fewer when all C(n, K) subsets fit in the budget: then every one is taken)."""
        k = min(int(self.params["k"]), n - 1)
        return np.asarray(
            sparse_k_masks(n, budget - 1, k, mode=self.params["sampling"], seed=seed,
                           include_full=True),
            dtype=bool,
        )

    def kernel(self) -> LocalityKernel:
        """The locality kernel π = sqrt(exp(-D^2/σ^2)) with this method's width."""
        return LocalityKernel(self.params["kernel_width"])

    def fit(self, masks: np.ndarray, y: np.ndarray, w: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray | float, float]:
        """Weighted linear surrogate of y (m,) or (m, T): (coef (n,) or (T, n), intercept,
        weighted R^2 of the first column)."""
        X = masks.astype(np.float64)
        alpha = 0.0 if self.params["solver"] == "ols" else float(self.params["alpha"])
        coef, intercept = weighted_ridge(X, y, w, alpha=alpha, fit_intercept=True)
        if np.ndim(y) == 1:
            r2 = weighted_r2(y, X @ coef + intercept, w)
            return np.asarray(coef, dtype=np.float64), float(intercept), float(r2)
        return np.asarray(coef, dtype=np.float64), intercept, float("nan")

    # -- the method -----------------------------------------------------------------------------
    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        if not hasattr(game, "locality"):
            raise ParameterError(
                "RoPE-LIME needs a local surrogate model (attrlens.explain), not a plain game."
            )
        n = game.n_features
        p = self.params
        budget = int(budget or self.default_budget(n))
        k_eff = min(int(p["k"]), n - 1)
        if k_eff != p["k"]:
            warnings.warn(
                f"rope_lime: k={p['k']} is not below the {n} features; each sample removes "
                f"k={k_eff} instead (recorded as k_effective).",
                stacklevel=2,
            )
        masks = self.sample_masks(n, budget, seed)
        filter_info = None
        q = p["rwmd_filter_quantile"]
        if q is not None:
            masks, filter_info = self._filter(masks, n, budget, seed, float(q), game.locality)

        D = game.locality(masks)
        kernel = self.kernel()
        w, sigma = kernel(D)
        y = game(masks)
        coef, intercept, r2 = self.fit(masks, y, w)
        rank = design_rank(masks[w > 0])
        if rank is not None and rank < n:
            warn_underdetermined(self.name, rank, n, len(masks), 2 * (n + 1))

        per_token = None
        if game.per_token:
            # the fit is linear in y: per-output-token coefficients average to ``coef``
            # (mean reduction) or sum to it (sum reduction); one multi-target fit
            mat = game.per_token_values(masks)  # memoised: no extra surrogate passes
            per_token = np.asarray(self.fit(masks, mat, w)[0]).T.reshape(n, -1)  # (n, T), T=1 too

        extra: dict[str, Any] = {
            "intercept": intercept,
            "fit_r2_weighted": r2,
            "n_samples": len(masks),
            "surrogate_evaluations": int(game.n_calls),
            "rwmd": {
                "min": float(D[1:].min()) if len(D) > 1 else 0.0,
                "median": float(np.median(D[1:])) if len(D) > 1 else 0.0,
                "max": float(D.max()),
            },
            "kernel_weight_sum": float(w.sum()),
        }
        if filter_info is not None:
            extra["rwmd_filter"] = filter_info
        if p["return_samples"]:
            extra["samples"] = {
                "masks": masks.astype(int).tolist(),
                "values": y.tolist(),
                "weights": w.tolist(),
                "distances": D.tolist(),
            }
        params = {
            "k_effective": k_eff,
            "n_perturbations": int(len(masks) - 1),
            "sigma": sigma,
            **kernel.describe(),
            **game.info,
            "attribution": "coef of the value (= -coef of NLL); positive supports the output",
        }
        return Explanation(scores=coef, per_output_token=per_token, extra=extra, params=params)

    def _filter(
        self, masks: np.ndarray, n: int, budget: int, seed: int, q: float, distances: Any
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Keep the masks whose D(z) is at most the q-quantile of a pilot draw (METHODS §1(f)9)."""
        pilot = self.sample_masks(n, 4 * (budget - 1) + 1, seed + 1)[1:]
        if len(pilot) == 0:
            return masks, {"quantile": q, "threshold": None, "kept": int(len(masks) - 1)}
        d_pilot = distances(pilot)
        thr = float(np.quantile(d_pilot, q))
        pool = pilot[d_pilot <= thr + 1e-12][: budget - 1]
        out = np.vstack([masks[:1], pool])
        return out, {"quantile": q, "threshold": thr, "pilot": len(pilot), "kept": len(pool)}
