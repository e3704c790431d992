"""Marginal and low-order game-theoretic baselines: KernelSHAP, Banzhaf and Faith-Banzhaf.

These are the baselines SPEX is compared with (METHODS.md §3(d)):

* ``kernel_shap``   Shapley values by KernelSHAP (Lundberg & Lee 2017): weighted least
  squares with the Shapley kernel w(z) = (n-1) / (C(n,|z|) |z| (n-|z|)), the empty and full
  coalitions fixed (intercept v(0), efficiency Σφ = v(1) - v(0) imposed exactly), paired
  sampling (every sampled coalition comes with its complement), and complete enumeration of
  the coalition sizes the budget can cover (as the ``shap`` package does). With a budget of
  2^n the result is the exact Shapley value.
* ``banzhaf``       Banzhaf values by regression on uniform random masks (each feature kept
  with probability 1/2): v(z) ~ β0 + βᵀz, ridge with the penalty chosen by leave-one-out
  cross-validation (scikit-learn's RidgeCV). E[β] = Banzhaf value.
* ``faith_banzhaf`` Faithful Banzhaf interaction index of order ℓ (Tsai et al. 2023): the same
  regression on all products Π_{i∈S} z_i with 1 ≤ |S| ≤ ℓ (Möbius basis). Its coefficients are
  the FBII of order ℓ; scores are the Banzhaf (or Shapley) values of the fitted polynomial.

Every method records its surrogate in ``extra["surrogate"]`` (a Möbius dictionary: ∅ term =
intercept) so the faithfulness harness (evaluation/faithfulness.py) can predict v̂(z).
"""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..games import BudgetedGame
from ..params import Param
from ..registry import register
from ..solvers.indices import (
    INDICES,
    ORDERED_INDICES,
    interactions_from_mobius,
    mobius_design,
    terms_of,
    values_from_mobius,
)
from ..solvers.regression import design_rank, value_scale
from ..solvers.sampling import kernel_shap_design, n_coalitions, uniform_masks
from .base import Explainer, Explanation, warn_underdetermined

# penalties tried by the automatic ridge; leave-one-out picks one (RidgeCV). The grid stops
# at 1e3: larger penalties shrink every coefficient to ~0 on noisy games
_ALPHAS = np.logspace(-6, 3, 19)


def ridge_fit(
    X: np.ndarray, y: np.ndarray, *, alpha: float | None = None
) -> tuple[np.ndarray, float, float]:
    """Ridge regression with an unpenalised intercept: (coef (p,), intercept, alpha used).

    X: (m, p) design, y: (m,). ``alpha=None`` picks the penalty from ``_ALPHAS`` by exact
    leave-one-out error (scikit-learn's RidgeCV); ``alpha=0`` is least squares (minimum-norm
    when under-determined).
    """
    from sklearn.linear_model import LinearRegression, Ridge, RidgeCV

    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    s = value_scale(y)  # solved at unit scale: the fit (and RidgeCV's choice) is equivariant
    if alpha is None:
        reg = RidgeCV(alphas=_ALPHAS, fit_intercept=True).fit(X, y / s)
        used = float(reg.alpha_)
    elif alpha == 0:
        reg = LinearRegression(fit_intercept=True).fit(X, y / s)
        used = 0.0
    else:
        reg = Ridge(alpha=float(alpha), fit_intercept=True, solver="svd").fit(X, y / s)
        used = float(alpha)
    return np.asarray(reg.coef_, dtype=float) * s, float(reg.intercept_) * s, used


def mobius_terms(coeffs: dict[tuple[int, ...], float]) -> list[dict[str, Any]]:
    """[{features, value}] of a Möbius dictionary (all terms, zeros included)."""
    return terms_of(coeffs, tol=-1.0)


# ---- KernelSHAP --------------------------------------------------------------------------
def constrained_kernel_regression(
    masks: np.ndarray, y: np.ndarray, w: np.ndarray, v_empty: float, v_full: float
) -> tuple[np.ndarray, int]:
    """φ (n,) minimising Σ w (y - v0 - φᵀz)² subject to Σφ = v(1) - v(0), and how many of
    the n - 1 free directions of φ the coalitions determine (the design's rank; a coalition
    and its complement give one row and its negative: one direction).

    The constraint is eliminated by writing φ_n = Δ - Σ_{j<n} φ_j (the shap package's trick).
    """
    n = masks.shape[1]
    delta = v_full - v_empty
    if n == 1 or len(masks) == 0:
        return np.full(n, delta / n), 0
    Z = masks.astype(float)
    target = y - v_empty - Z[:, -1] * delta
    A = Z[:, :-1] - Z[:, -1:]
    sw = np.sqrt(w)
    sol, _, rank, _ = np.linalg.lstsq(A * sw[:, None], target * sw, rcond=None)
    return np.append(sol, delta - sol.sum()), int(rank)


def _cap(n: int, value: int) -> int:
    """value, but never more than the 2^n coalitions there are."""
    total = n_coalitions(n)
    return int(value if total is None else min(total, value))


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (psutil's estimate, which counts
    reclaimable caches; None when unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except (ImportError, OSError, AttributeError):
        return None


def check_plan_memory(owner: str, n: int, m: int, bytes_per_mask: float, *,
                      what: str = "--budget") -> None:
    """Refuse a plan of ``m`` coalitions on ``n`` features whose working set (about
    ``m * bytes_per_mask`` bytes) exceeds half the available memory, with the estimate;
    ``what`` is the option that sets ``m``."""
    need = float(m) * bytes_per_mask
    avail = available_memory()
    if avail is None or need <= 0.5 * avail:
        return
    fit = max(2, int(0.5 * avail / bytes_per_mask))
    raise ParameterError(
        f"{owner} would evaluate {m} coalitions of {n} features, which needs about "
        f"{need / 2**30:.1f} GiB of memory; {avail / 2**30:.1f} GiB is available. Lower "
        f"{what} to at most {fit} (or explain fewer features)."
    )


@register
class KernelShapExplainer(Explainer):
    """KernelSHAP: Shapley values by Shapley-kernel regression (paired, efficiency exact)."""

    name = "kernel_shap"
    description = (
        "KernelSHAP: Shapley values by Shapley-kernel weighted regression with paired "
        "sampling and exact efficiency."
    )
    paper = "Lundberg & Lee (2017), 'A unified approach to interpreting model predictions'"
    default_masker = "replace"
    default_target = "logprob"

    def min_budget(self, n_features: int) -> int:
        # the two ends and n - 1 pairs (a coalition and its complement): fewer leave the
        # regression underdetermined, as a pair determines one direction of the n - 1 free
        # ones (at n + 1, 9 features scored 0.0 to 4.6 for true values 1 to 2; budget 2 split
        # v(1) - v(0) equally over the features, a ranking of nothing)
        return _cap(n_features, 2 * n_features)

    def default_budget(self, n_features: int) -> int:
        return _cap(n_features, max(64, 2 * n_features + 2048))

    def check(self, n_features: int) -> None:
        budget = self.params.get("budget") or self.default_budget(n_features)
        # masks, float design, weighted copies and lstsq work space, plus the game's memo
        check_plan_memory(f"The method '{self.name}'", n_features, _cap(n_features, int(budget)),
                          48.0 * n_features + 200.0)

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        n = game.n_features
        rng = np.random.default_rng(seed)
        ends = np.zeros((2, n), dtype=bool)
        ends[0] = True  # full coalition, then the empty one
        v_full, v_empty = (float(v) for v in game(ends))
        n_inner = _cap(n, int(budget or 2)) - 2  # distinct masks besides the two ends
        masks, w = kernel_shap_design(n, max(0, n_inner), rng)
        y = game(masks) if len(masks) else np.zeros(0)
        phi, rank = constrained_kernel_regression(masks, y, w, v_empty, v_full)
        if n > 1 and rank < n - 1:  # (random pairs that happen to be dependent)
            warn_underdetermined(self.name, rank, n - 1, len(masks) + 2,
                                 self.min_budget(n) + n)
        exact = n_coalitions(n) is not None and len(masks) == 2**n - 2
        surrogate = {(): v_empty, **{(i,): float(phi[i]) for i in range(n)}}
        return Explanation(
            scores=phi,
            params={"budget": _cap(n, int(budget or 2))},  # never more than 2^n coalitions
            extra={
                "v_full": v_full,
                "v_empty": v_empty,
                "n_samples": int(len(masks) + 2),
                "exact": bool(exact),
                "surrogate": {"basis": "mobius", "terms": mobius_terms(surrogate)},
            },
        )


# ---- Banzhaf / Faith-Banzhaf -------------------------------------------------------------
def faith_banzhaf_fit(
    masks: np.ndarray, y: np.ndarray, order: int, *, alpha: float | None = None
) -> tuple[dict[tuple[int, ...], float], float]:
    """Order-ℓ regression in the Möbius basis; ({S: a(S)} with ∅ = intercept, alpha used)."""
    n = masks.shape[1]
    subsets = [S for k in range(1, order + 1) for S in itertools.combinations(range(n), k)]
    coef, intercept, used = ridge_fit(mobius_design(masks, subsets), y, alpha=alpha)
    out = {(): intercept}
    out.update({S: float(c) for S, c in zip(subsets, coef)})
    return out, used


_ALPHA = Param("alpha", None, "ridge penalty; None = chosen by leave-one-out (RidgeCV)",
               low=0, none_ok=True)


class _RegressionExplainer(Explainer):
    """Shared body of ``banzhaf`` and ``faith_banzhaf``: regression on uniform masks."""

    default_masker = "replace"
    default_target = "logprob"
    max_terms = 20000
    #: a plan over these many evaluations, or a design over these many bytes, is warned of
    warn_evaluations = 20000
    warn_design_bytes = 2.0**30

    def _order(self) -> int:
        return int(self.params.get("order", 1))

    @staticmethod
    def _n_terms(n: int, order: int) -> int:
        return sum(math.comb(n, k) for k in range(1, min(order, n) + 1))

    def min_budget(self, n_features: int) -> int:
        # one mask per coefficient and the intercept: fewer leave the fit underdetermined
        return _cap(n_features, self._n_terms(n_features, self._order()) + 1)

    def default_budget(self, n_features: int) -> int:
        p = self._n_terms(n_features, self._order())
        return _cap(n_features, max(64, 4 * p, 2048))

    def check(self, n_features: int) -> None:
        p = self._n_terms(n_features, self._order())
        if p > self.max_terms:
            raise ParameterError(
                f"{self.name} of order {self._order()} with {n_features} features has {p} "
                f"interaction terms, more than the {self.max_terms} this regression handles; "
                f"lower the 'order' parameter (or use spex/proxyspex for many features)."
            )
        budget = self.params.get("budget") or self.default_budget(n_features)
        m = _cap(n_features, int(budget))
        # masks, the float design over p terms (and the ridge's copies), the game's memo
        check_plan_memory(f"The method '{self.name}'", n_features, m,
                          24.0 * p + n_features + 200.0)
        design = 8.0 * m * (p + 1)
        if m > self.warn_evaluations or design > self.warn_design_bytes:
            # (many features at order 2: 120 features are 7,260 terms, 29,040 evaluations)
            warnings.warn(
                f"{self.name} with {n_features} features fits {p} terms"
                f"{f' of order {self._order()}' if self._order() > 1 else ''} on {m} model "
                f"evaluations (a {design / 2**30:.1f} GiB design): this takes long; lower "
                f"{'the order or ' if self._order() > 1 else ''}the budget, or use "
                f"spex/proxyspex for many features.", stacklevel=2)

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        n = game.n_features
        order = min(self._order(), n)
        rng = np.random.default_rng(seed)
        masks = uniform_masks(n, int(budget or 0), rng)
        y = game(masks)
        exhaustive = n_coalitions(n) is not None and len(masks) == 2**n
        alpha = self.params["alpha"]
        if alpha is None and exhaustive:
            alpha = 0.0  # every coalition seen: least squares is the exact index
        mob, alpha = faith_banzhaf_fit(masks, y, order, alpha=alpha)
        p = self._n_terms(n, order)
        rank = design_rank(mobius_design(masks, list(mob)[1:])) if not exhaustive else p
        if rank is not None and rank < p:
            warn_underdetermined(self.name, rank, p, len(masks), 2 * (p + 1))
        kind = self.params.get("scores", "banzhaf")
        scores = values_from_mobius(mob, n, kind)
        extra: dict[str, Any] = {
            "intercept": float(mob[()]),
            "alpha": alpha,
            "n_samples": len(masks),
            "exact_design": bool(exhaustive),
            "surrogate": {"basis": "mobius", "terms": mobius_terms(mob)},
        }
        ran = {"budget": _cap(n, int(budget or 0))}
        if "order" in self.params:  # the order that ran: at most n
            ran["order"] = order
        return Explanation(scores=scores, interactions=self._interactions(mob, n, order),
                           extra=extra, params=ran)

    def _interactions(
        self, mob: dict[tuple[int, ...], float], n: int, order: int
    ) -> dict[str, Any] | None:
        return None


@register
class BanzhafExplainer(_RegressionExplainer):
    """Banzhaf values by regression on uniform random masks (order 1)."""

    name = "banzhaf"
    description = "Banzhaf values: ridge regression v(z) ~ b0 + bᵀz on uniform random masks."
    paper = "Banzhaf (1965); regression estimator as in Tsai et al. (2023), 'Faith-Shap'"
    parameters = (_ALPHA,)


@register
class FaithBanzhafExplainer(_RegressionExplainer):
    """Faith-Banzhaf interactions of order ℓ: Möbius-basis regression on uniform masks."""

    name = "faith_banzhaf"
    description = (
        "Faith-Banzhaf interaction index of order l: regression on all products of up to l "
        "features over uniform random masks."
    )
    paper = "Tsai, Yeh & Ravikumar (2023), 'Faith-Shap: The faithful Shapley interaction index'"
    parameters = (
        Param("order", 2, "interaction order l of the regression (products of up to l features)",
              type=int, low=1),
        _ALPHA,
        Param("scores", "banzhaf", "first-order scores of the fitted polynomial",
              type=str, choices=("banzhaf", "shapley")),
        Param("index", "fbii", "interaction index of the fitted polynomial (fbii = its "
              "coefficients; ksii/fsii/stii only at an order covering every feature)",
              type=str, choices=INDICES),
    )

    def check(self, n_features: int) -> None:
        index, order = self.params["index"], self._order()
        if index in ORDERED_INDICES and index != "fbii" and order < n_features:
            # any order-l index of a polynomial of degree l is its Möbius form, i.e. the FBII:
            # the game's own ksii/fsii/stii came back as the FBII under their names
            raise ParameterError(
                f"faith_banzhaf's index '{index}' of order {order} would be its own FBII "
                f"coefficients under another name, not the game's {index} ({n_features} "
                f"features): use index=fbii, or spex/proxyspex (index={index}) for the "
                f"game's {index}."
            )
        if index in ("mobius", "sii") and order < n_features:
            # the fitted polynomial's Möbius form is its coefficients (the FBII), and its SII
            # differs from the game's, which reads the interactions above order l (errors of
            # 0.40 and 0.08 on a 6-feature game of order 4); its Fourier, Banzhaf and BII
            # terms up to order l are the game's (the uniform projection keeps them)
            raise ParameterError(
                f"faith_banzhaf's index '{index}' of order {order} would be the fitted "
                f"polynomial's {index}, not the game's ({n_features} features): use "
                f"index=fbii, fourier, banzhaf or bii, an order of {n_features}, or "
                f"spex/proxyspex (index={index}) for the game's {index}.")
        super().check(n_features)

    def _interactions(
        self, mob: dict[tuple[int, ...], float], n: int, order: int
    ) -> dict[str, Any] | None:
        index = self.params["index"]
        if index == "fbii":
            # the fitted coefficients are the FBII of order ℓ (and the surrogate's Möbius)
            return {"index": "fbii", "order": order, "terms": mobius_terms(mob)}
        return interactions_from_mobius(mob, n, index, order)
