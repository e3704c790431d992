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
  (generalised) cross-validation. E[β] = Banzhaf value.
* ``faith_banzhaf`` Faithful Banzhaf interaction index of order ℓ (Tsai et al. 2023): the same
  regression on all products Π_{i∈S} z_i with 1 ≤ |S| ≤ ℓ (Möbius basis). Its coefficients are
  the FBII of order ℓ; scores are the Banzhaf (or Shapley) values of the fitted polynomial.

Every method records its surrogate in ``extra["surrogate"]`` (a Möbius dictionary: ∅ term =
intercept) so the faithfulness harness (evaluation/faithfulness.py) can predict v̂(z).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ..errors import ParameterError
from ..params import check_param
from ..games import Game
from ..registry import register
from .base import Explainer, Explanation

# penalties tried by the automatic ridge; leave-one-out picks one (as RidgeCV does). The grid
# stops at 1e3: larger penalties shrink every coefficient to ~0 on noisy games
_ALPHAS = np.logspace(-6, 3, 19)


# ---- shared numerics ---------------------------------------------------------------------
def uniform_masks(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(m, n) distinct masks drawn uniformly from {0,1}^n, m = min(count, 2^n).

    When ``count >= 2^n`` every coalition is returned once (in binary order), so small games
    are solved exactly; otherwise rows are distinct uniform draws (rejection of repeats).
    """
    if n < 31 and count >= 2**n:
        idx = np.arange(2**n, dtype=np.int64)
        return ((idx[:, None] >> np.arange(n)) & 1).astype(bool)
    out = np.empty((0, n), dtype=bool)
    seen: set[bytes] = set()
    for _ in range(100):
        if len(out) >= count:
            break
        cand = rng.random((2 * (count - len(out)) + 8, n)) < 0.5
        fresh = []
        for row in cand:
            key = np.packbits(row).tobytes()
            if key not in seen:
                seen.add(key)
                fresh.append(row)
                if len(out) + len(fresh) >= count:
                    break
        if fresh:
            out = np.vstack([out, np.asarray(fresh, dtype=bool)])
    return out


def ridge_gcv(
    X: np.ndarray,
    y: np.ndarray,
    *,
    alpha: float | None = None,
    alphas: np.ndarray = _ALPHAS,
) -> tuple[np.ndarray, float, float]:
    """Ridge regression with an unpenalised intercept; (coef (p,), intercept, alpha used).

    X: (m, p) design, y: (m,). ``alpha=None`` picks the penalty from ``alphas`` by exact
    leave-one-out error (the closed form e_i / (1 - h_ii) via one SVD, as RidgeCV's default);
    ``alpha=0`` is least squares (minimum-norm when under-determined).
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    m = len(y)
    xm, ym = X.mean(0), y.mean()
    Xc, yc = X - xm, y - ym
    U, s, Vt = np.linalg.svd(Xc, full_matrices=False)
    keep = s > s.max(initial=0.0) * 1e-12 if s.size else s.astype(bool)
    U, s, Vt = U[:, keep], s[keep], Vt[keep]
    uty = U.T @ yc

    def solve(a: float) -> np.ndarray:
        d = s / (s**2 + a) if a > 0 else 1.0 / s
        return Vt.T @ (d * uty)

    if alpha is None:
        best, best_err = float(alphas[0]), np.inf
        u2 = U**2
        for a in alphas:
            shrink = s**2 / (s**2 + a)
            h = u2 @ shrink + 1.0 / m  # hat diagonal, intercept included
            resid = yc - U @ (shrink * uty)
            loo = resid / np.clip(1.0 - h, 1e-12, None)
            err = float(np.mean(loo**2))
            # ties (noise-free data) go to the smallest penalty
            if err < best_err * (1 - 1e-9):
                best, best_err = float(a), err
        alpha = best
    coef = solve(float(alpha))
    return coef, float(ym - xm @ coef), float(alpha)


def mobius_design(masks: np.ndarray, subsets: list[tuple[int, ...]]) -> np.ndarray:
    """(m, len(subsets)) matrix of Π_{i∈S} z_i for each subset S (1 = all kept)."""
    masks = np.asarray(masks, dtype=bool)
    out = np.empty((len(masks), len(subsets)), dtype=float)
    for j, S in enumerate(subsets):
        out[:, j] = masks[:, list(S)].all(1) if S else 1.0
    return out


def mobius_terms(coeffs: dict[tuple[int, ...], float]) -> list[dict[str, Any]]:
    """Interaction terms [{features, value}] of a {subset: value} dictionary, sorted by
    subset size then features."""
    return [
        {"features": [int(i) for i in k], "value": float(v)}
        for k, v in sorted(coeffs.items(), key=lambda kv: (len(kv[0]), kv[0]))
    ]


def values_from_mobius(
    mobius: dict[tuple[int, ...], float], n: int, kind: str = "shapley"
) -> np.ndarray:
    """Shapley (Σ_{S∋i} a(S)/|S|) or Banzhaf (Σ_{S∋i} a(S)/2^{|S|-1}) values, shape (n,)."""
    out = np.zeros(n)
    for S, a in mobius.items():
        if not S:
            continue
        w = 1.0 / len(S) if kind == "shapley" else 0.5 ** (len(S) - 1)
        for i in S:
            out[i] += a * w
    return out


# ---- KernelSHAP --------------------------------------------------------------------------
def _kernel_size_mass(n: int) -> np.ndarray:
    """Shapley-kernel mass of each coalition size s = 1..n-1 (normalised): ∝ (n-1)/(s(n-s))."""
    s = np.arange(1, n)
    w = (n - 1) / (s * (n - s))
    return w / w.sum()


def kernel_shap_design(
    n: int, n_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(masks (m, n), weights (m,)) for KernelSHAP, excluding the empty and full coalitions.

    Sizes are taken in pairs (s, n-s) from the outside in; a pair is enumerated completely
    when the budget left covers it at its kernel mass, and the rest of the budget is filled
    with paired random samples from the remaining sizes (duplicate draws add weight). The
    weights of each part sum to its kernel mass, so the full design's weights sum to one.
    """
    mass = _kernel_size_mass(n)  # index s-1
    masks: list[np.ndarray] = []
    weights: list[float] = []
    left = n_samples
    remaining = mass.copy()
    n_pairs = n // 2  # sizes 1..floor(n/2) with their complements
    for s in range(1, n_pairs + 1):
        paired = s != n - s
        count = math.comb(n, s) * (2 if paired else 1)
        # the remaining kernel mass is spread over the remaining sizes; enumerate this pair
        # only if the budget share it would get covers every coalition of it
        pair_mass = remaining[s - 1] + (remaining[n - s - 1] if paired else 0.0)
        total_left = remaining.sum()
        if total_left <= 0 or left * pair_mass / total_left < count - 1e-9 or count > left:
            break
        for size in ((s, n - s) if paired else (s,)):
            w_each = mass[size - 1] / math.comb(n, size)
            for comb in itertools.combinations(range(n), size):
                row = np.zeros(n, dtype=bool)
                row[list(comb)] = True
                masks.append(row)
                weights.append(w_each)
            remaining[size - 1] = 0.0
        left -= count
    if left > 0 and remaining.sum() > 0:
        # paired random sampling over the sizes not enumerated
        p = remaining / remaining.sum()
        counts: dict[bytes, list[Any]] = {}
        tries = 0
        max_tries = 50 * left + 100
        while len(counts) < left and tries < max_tries:
            tries += 1
            size = int(rng.choice(np.arange(1, n), p=p))
            row = np.zeros(n, dtype=bool)
            row[rng.choice(n, size=size, replace=False)] = True
            for r in (row, ~row):
                key = np.packbits(r).tobytes()
                if key in counts:
                    counts[key][1] += 1.0
                elif len(counts) < left:
                    counts[key] = [r, 1.0]
        if counts:
            total = sum(c for _, c in counts.values())
            scale = remaining.sum() / total
            for r, c in counts.values():
                masks.append(r)
                weights.append(c * scale)
    if not masks:
        return np.zeros((0, n), dtype=bool), np.zeros(0)
    return np.asarray(masks, dtype=bool), np.asarray(weights, dtype=float)


def constrained_kernel_regression(
    masks: np.ndarray, y: np.ndarray, w: np.ndarray, v_empty: float, v_full: float
) -> np.ndarray:
    """φ (n,) minimising Σ w (y - v0 - φᵀz)² subject to Σφ = v(1) - v(0).

    The constraint is eliminated by writing φ_n = Δ - Σ_{j<n} φ_j (the shap package's trick).
    """
    n = masks.shape[1]
    delta = v_full - v_empty
    if n == 1 or len(masks) == 0:
        return np.full(n, delta / n)
    Z = masks.astype(float)
    target = y - v_empty - Z[:, -1] * delta
    A = Z[:, :-1] - Z[:, -1:]
    sw = np.sqrt(w)
    sol, *_ = np.linalg.lstsq(A * sw[:, None], target * sw, rcond=None)
    return np.append(sol, delta - sol.sum())


@register
class KernelShapExplainer(Explainer):
    """KernelSHAP: Shapley values by Shapley-kernel regression (paired, efficiency exact)."""

    name = "kernel_shap"
    description = (
        "KernelSHAP: Shapley values by Shapley-kernel weighted regression with paired "
        "sampling and exact efficiency."
    )
    default_masker = "replace"
    default_target = "logprob"

    def __init__(self, *, budget: int | None = None):
        super().__init__(budget=budget)

    def min_budget(self, n_features: int) -> int:
        return 2

    def default_budget(self, n_features: int) -> int:
        return int(min(2**n_features if n_features < 31 else 2**31, max(64, 2 * n_features + 2048)))

    def explain_game(self, game: Game, *, seed: int = 0) -> Explanation:
        n = game.n_features
        self.validate(n)
        budget = self.resolve_budget(n)
        rng = np.random.default_rng(seed)
        ends = np.zeros((2, n), dtype=bool)
        ends[0] = True  # full coalition, then the empty one
        v_full, v_empty = (float(v) for v in game(ends))
        n_inner = budget - 2
        if n < 31:
            n_inner = min(n_inner, 2**n - 2)
        masks, w = kernel_shap_design(n, n_inner, rng)
        y = game(masks) if len(masks) else np.zeros(0)
        phi = constrained_kernel_regression(masks, y, w, v_empty, v_full)
        exact = n < 31 and len(masks) == 2**n - 2
        surrogate = {(): v_empty, **{(i,): float(phi[i]) for i in range(n)}}
        return Explanation(
            scores=phi,
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
    X = mobius_design(masks, subsets)
    coef, intercept, used = ridge_gcv(X, y, alpha=alpha)
    out = {(): intercept}
    out.update({S: float(c) for S, c in zip(subsets, coef)})
    return out, used


class _RegressionExplainer(Explainer):
    """Shared body of ``banzhaf`` and ``faith_banzhaf``: regression on uniform masks."""

    default_masker = "replace"
    default_target = "logprob"
    _order_fixed: int | None = None
    max_terms = 20000

    def min_budget(self, n_features: int) -> int:
        return 2

    def default_budget(self, n_features: int) -> int:
        p = self._n_terms(n_features, self._order())
        cap = 2**n_features if n_features < 31 else 2**31
        return int(min(cap, max(64, 4 * p, 2048)))

    def _order(self) -> int:
        return self._order_fixed if self._order_fixed is not None else self.params["order"]

    @staticmethod
    def _n_terms(n: int, order: int) -> int:
        return sum(math.comb(n, k) for k in range(1, min(order, n) + 1))

    def validate(self, n_features: int) -> None:
        owner = type(self).__name__
        alpha = self.params.get("alpha")
        if alpha is not None:
            check_param(owner, "alpha", alpha, low=0)
        check_param(owner, "scores", self.params.get("scores", "banzhaf"),
                    choices=("banzhaf", "shapley"))
        if self._order_fixed is None:
            check_param(owner, "order", self.params["order"], kind=int, low=1)
        p = self._n_terms(n_features, self._order())
        if p > self.max_terms:
            raise ParameterError(
                f"{self.name} of order {self._order()} with {n_features} features has {p} "
                f"interaction terms, more than the {self.max_terms} this regression handles; "
                f"lower the 'order' parameter (or use spex/proxyspex for many features)."
            )

    def explain_game(self, game: Game, *, seed: int = 0) -> Explanation:
        n = game.n_features
        self.validate(n)
        budget = self.resolve_budget(n)
        order = min(self._order(), n)
        rng = np.random.default_rng(seed)
        masks = uniform_masks(n, budget, rng)
        y = game(masks)
        exhaustive = n < 31 and len(masks) == 2**n
        alpha = self.params.get("alpha")
        if alpha is None and exhaustive:
            alpha = 0.0  # every coalition seen: least squares is the exact index
        mob, alpha = faith_banzhaf_fit(masks, y, order, alpha=alpha)
        kind = self.params.get("scores", "banzhaf")
        scores = values_from_mobius(mob, n, kind)
        extra: dict[str, Any] = {
            "intercept": float(mob[()]),
            "alpha": alpha,
            "n_samples": len(masks),
            "exact_design": bool(exhaustive),
            "surrogate": {"basis": "mobius", "terms": mobius_terms(mob)},
        }
        return Explanation(scores=scores, interactions=self._interactions(mob, n, order),
                           extra=extra, params={"scores": kind})

    def _interactions(self, mob: dict[tuple[int, ...], float], n: int, order: int) -> Any:
        return None


@register
class BanzhafExplainer(_RegressionExplainer):
    """Banzhaf values by regression on uniform random masks (order 1)."""

    name = "banzhaf"
    description = "Banzhaf values: ridge regression v(z) ~ b0 + bᵀz on uniform random masks."
    _order_fixed = 1

    def __init__(self, *, budget: int | None = None, alpha: float | None = None):
        super().__init__(budget=budget, alpha=alpha)


@register
class FaithBanzhafExplainer(_RegressionExplainer):
    """Faith-Banzhaf interactions of order ℓ: Möbius-basis regression on uniform masks."""

    name = "faith_banzhaf"
    description = (
        "Faith-Banzhaf interaction index of order l: regression on all products of up to l "
        "features over uniform random masks."
    )

    def __init__(
        self,
        *,
        budget: int | None = None,
        order: int = 2,
        alpha: float | None = None,
        scores: str = "banzhaf",
        index: str = "fbii",
    ):
        super().__init__(budget=budget, order=order, alpha=alpha, scores=scores, index=index)

    def validate(self, n_features: int) -> None:
        super().validate(n_features)
        from .spex import INDICES

        check_param("FaithBanzhafExplainer", "index", self.params["index"], choices=INDICES)

    def _interactions(self, mob: dict[tuple[int, ...], float], n: int, order: int) -> Any:
        index = self.params["index"]
        if index == "fbii":
            # the fitted coefficients are the FBII of order ℓ (and the surrogate's Möbius)
            return {"index": "fbii", "order": order, "terms": mobius_terms(mob)}
        from .spex import interactions_from_mobius

        return interactions_from_mobius(mob, n, index, order)
