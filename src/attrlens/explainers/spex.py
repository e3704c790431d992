"""SPEX and ProxySPEX: sparse Fourier (interaction) explanations of any value function.

SPEX (Kang et al., ICML 2025; METHODS.md §3) queries the game on a structured design of
C (P+1) 2^b masks (random subsampling + BCH-coded delays), and a peeling decoder recovers a
sparse Fourier dictionary v(z) = Σ_k F(k) (-1)^{<z,k>} with |k| <= t (``max_order``).
ProxySPEX (Butler et al., NeurIPS 2025; METHODS.md §3.1) fits gradient-boosted trees to the
game on uniform random masks, reads their exact Fourier spectrum, keeps the coefficients
holding 95% of the energy and refits them by ridge regression.

Small games: when the budget covers all 2^n coalitions (and, for SPEX, 2^n is below the
design's cost), every coalition is evaluated once and the game's whole exact spectrum is
used (``max_order`` bounds only what a design or a proxy recovers); ``min_budget`` states
that real count.

Both return first-order scores (Shapley values by default, or Banzhaf values) derived from
the dictionary — positive = the feature raises v — and interactions in the index the user
asks for (``index``/``order``, see :mod:`attrlens.solvers.indices`):

    fourier  the Fourier coefficients themselves (``features`` = support, [] = constant)
    mobius   a(S) = (-2)^{|S|} Σ_{k⊇S} F(k)            (presence basis)
    shapley, banzhaf                                     first-order values, order 1
    sii, bii                                             Shapley/Banzhaf interaction index
    ksii, fsii, fbii, stii                               k-SII, faithful, Taylor of order ℓ

The full Fourier dictionary is also kept in ``extra["surrogate"]`` for the faithfulness
harness (evaluation/faithfulness.py).
"""

from __future__ import annotations

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
    interactions_from_fourier,
    terms_of,
    values_from_fourier,
)
from ..solvers.regression import value_scale
from ..solvers.sampling import all_masks, n_coalitions, uniform_masks
from .base import Explainer, Explanation

DEFAULT_B = 6  # b when neither budget nor b is given (the paper's b = 8 costs 4x more)
B_MIN = 3

Coeffs = dict[tuple[int, ...], float]

_COMMON = (
    Param("max_order", 5, "degree bound t of the recovered interactions", type=int, low=1),
    Param("index", "fsii", "interaction index of the result", type=str, choices=INDICES),
    Param("order", None, "order l of ksii/fsii/fbii/stii (default 2); for the other indices "
          "the largest interaction shown (None = all)", type=int, low=1, none_ok=True),
    Param("scores", "shapley", "first-order scores derived from the spectrum", type=str,
          choices=("shapley", "banzhaf")),
)


def exact_spectrum(values: np.ndarray, n: int) -> Coeffs:
    """The whole Fourier spectrum of a game from its values on ``all_masks(n)`` (binary
    order): every term with |F| > 1e-12 of the largest non-constant |F| (the constant is
    always kept). Nothing is cut at ``max_order``: with every coalition known the scores and
    indices are the game's own (a cut at 5 of 7 features moved Shapley values by 2%)."""
    from ..errors import InputError
    from ..solvers.fourier import fwht

    v = np.asarray(values, dtype=float)
    scale = value_scale(v)  # |F| <= max |v|: transformed at unit scale, nothing overflows
    with np.errstate(over="ignore", invalid="ignore"):  # said below, in one line
        f = fwht(v / scale) * scale  # index bit i <-> feature i, as all_masks
    if not np.all(np.isfinite(f)):
        raise InputError(
            "The game's Fourier transform overflows (its values are too large for float64 "
            "sums); rescale the value function (e.g. divide it by its largest value)."
        )
    # relative to the largest effect, not to the constant: v = 1e12 + z·w kept no effect
    tol = 1e-12 * float(np.abs(f[1:]).max(initial=0.0))
    out: Coeffs = {}
    for j, c in enumerate(f):
        if j == 0 or abs(c) > tol:
            out[tuple(i for i in range(n) if (j >> i) & 1)] = float(c)
    return out


#: SPEX warns when its interactions explain less than this share of the variance of the
#: values it queried (``extra["fit_r2"]``)
FIT_WARN = 0.5


class _FourierExplainer(Explainer):
    """Shared checks and output of SPEX and ProxySPEX."""

    default_masker = "replace"  # masked features replaced by the mask token, as in SPEX
    default_target = "logprob"  # Σ_t log p(o_t | x(z), o_<t), teacher forced

    def check_params(self) -> None:
        p = self.params
        if p["order"] is not None and p["index"] in ORDERED_INDICES and p["order"] > p["max_order"]:
            raise ParameterError(
                f"The 'order' parameter of {self.owner()} ({p['order']}) exceeds max_order "
                f"({p['max_order']}); the dictionary has no terms above max_order. Lower "
                f"--order or raise --max-order."
            )

    def _order_bound(self, n: int) -> int:
        """The degree bound in use: ``max_order``, at most n (no interaction has more than n
        features; a max_order of 100000 built a code for it and never returned)."""
        return min(int(self.params["max_order"]), max(1, int(n)))

    def _explanation(self, coeffs: Coeffs, n: int, extra: dict[str, Any]) -> Explanation:
        p = self.params
        scores = values_from_fourier(coeffs, n, p["scores"])
        inter = interactions_from_fourier(coeffs, n, p["index"], p["order"])
        extra = {
            **extra,
            "n_coefficients": len(coeffs),
            "surrogate": {"basis": "fourier", "terms": terms_of(coeffs)},
        }
        return Explanation(scores=scores, interactions=inter, extra=extra,
                           params={"order": inter["order"]})


# ---- SPEX -------------------------------------------------------------------------------
@register
class SpexExplainer(_FourierExplainer):
    """SPEX: sparse Fourier transform of the game from a BCH-coded sampling design.

    The design uses the given ``b``, or the largest b with C(P+1)2^b <= budget. When the
    budget covers all 2^n coalitions and 2^n is below the design's cost, the game is
    enumerated instead and its exact spectrum used (``extra["exhaustive"]``).
    """

    name = "spex"
    description = (
        "SPEX: sparse Fourier interactions from a BCH-coded sampling design "
        "(Kang et al. 2025); Shapley scores + any interaction index."
    )
    paper = "Kang et al. (ICML 2025), 'SPEX: Scaling feature interaction explanations for LLMs'"
    parameters = (
        Param("b", None, "sparsity exponent (2^b bins per group) instead of a budget; None = "
              "from the budget", type=int, low=B_MIN, high=12, none_ok=True),
        *_COMMON,
        Param("n_groups", 3, "C, the number of subsampling groups", type=int, low=1),
        Param("decoder", "soft", "soft (BCH + Chase) or hard (Berlekamp-Massey only)",
              type=str, choices=("soft", "hard")),
        Param("chase_depth", None, "least-reliable parity bits flipped by the soft decoder "
              "(None = 2t)", type=int, low=0, high=16, none_ok=True),
        Param("refit", None, "refit of the recovered support: None (reference) or lasso",
              type=str, choices=("lasso",), none_ok=True),
    )

    def _queries(self, n: int, b: int) -> int:
        from ..solvers.fourier import n_queries

        return n_queries(n, b, t=self._order_bound(n), n_groups=self.params["n_groups"])

    def _cheaper_to_enumerate(self, n: int, b: int) -> bool:
        total = n_coalitions(n)
        return total is not None and total <= self._queries(n, b)

    def min_budget(self, n_features: int) -> int:
        b = self.params["b"] or B_MIN
        if self._cheaper_to_enumerate(n_features, b):
            return 2**n_features
        return self._queries(n_features, b)

    def default_budget(self, n_features: int) -> int:
        b = self.params["b"] or DEFAULT_B
        if self._cheaper_to_enumerate(n_features, b):
            return 2**n_features
        return self._queries(n_features, b)

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        from ..solvers.fourier import b_for_budget, fourier_r2, make_design, spex_transform

        n = game.n_features
        p = self.params
        b = p["b"]
        if b is None:
            b = B_MIN if self._cheaper_to_enumerate(n, B_MIN) else b_for_budget(
                n, int(budget or 0), t=self._order_bound(n), n_groups=p["n_groups"])
        total = n_coalitions(n)
        if total is not None and total <= int(budget or 0) and self._cheaper_to_enumerate(n, b):
            values = game(all_masks(n))
            coeffs = exact_spectrum(values, n)
            exp = self._explanation(coeffs, n, {"exhaustive": True, "n_queries": total})
            exp.params["b"] = None
            return exp
        design = make_design(n, b=b, t=self._order_bound(n), n_groups=p["n_groups"], seed=seed)
        masks = design.masks()
        values = game(masks)  # repeated masks are free (counted once)
        res = spex_transform(design, values, decoder=p["decoder"], chase_depth=p["chase_depth"],
                             refit=p["refit"], seed=seed)
        extra = {
            "exhaustive": False,
            "b": b,
            "max_order": self._order_bound(n),
            "n_queries": design.n_queries,
            "n_delays": design.n_delays,
            "decoder_iterations": res.n_iterations,
            "decoder_stopped_by": res.stopped_by,
            "unexplained_bins": res.n_multiton_bins,
            "residual_energy": res.residual_energy,
        }
        extra["fit_r2"] = fit = fourier_r2(res.coeffs, masks, values)
        if fit < FIT_WARN and np.ptp(values) > 0:  # (a constant game has no variance)
            # more effects than the design's bins: the peeling stalls and most of the game is
            # left out (an additive game of 250 features at b = 6 kept 49 of its 250)
            warnings.warn(
                f"SPEX's recovered interactions explain {fit:.0%} of the variance of the "
                f"{len(values)} values it queried (b = {b}): the game has more effects than "
                f"the design separates and the scores miss many of them; raise b (e.g. "
                f"b={min(b + 2, 12)}) or the budget.", stacklevel=2)
        exp = self._explanation(res.coeffs, n, extra)
        exp.params["b"] = b
        return exp


# ---- ProxySPEX --------------------------------------------------------------------------
# LightGBM's leaves hold at least 20 masks (min_child_samples), so no tree splits fewer
# than 40: below that every score was 0
_PROXY_MIN = 40


@register
class ProxySpexExplainer(_FourierExplainer):
    """ProxySPEX: boosted-tree proxy on uniform masks, exact tree -> Fourier, sparse refit.

    ``budget`` = number of distinct uniform random masks evaluated. A budget that covers
    all 2^n coalitions (the default up to n = 10) enumerates them and gives the exact
    spectrum (terms up to max_order) without a proxy.
    """

    name = "proxyspex"
    description = (
        "ProxySPEX: LightGBM proxy on uniform masks, exact tree-to-Fourier conversion, "
        "95%-energy truncation and ridge refit (Butler et al. 2025)."
    )
    paper = ("Butler et al. (NeurIPS 2025), 'ProxySPEX: Inference-efficient interpretability "
             "via sparse feature interactions in LLMs'")
    parameters = (
        *_COMMON,
        Param("energy", 0.95, "share of the non-constant Fourier energy kept before the refit",
              low=1e-9, high=1.0),
        Param("grid", "reference", "LightGBM grid: reference (spectralexplain: 500/1000/5000 "
              "trees) or small (shapiq: 500/1000 trees, faster)", type=str,
              choices=("reference", "small")),
        Param("energy_cut", "covering", "which tree coefficients the energy share keeps: "
              "covering (through the one that reaches it, ties included: shapiq) or strict "
              "(only those above it: spectralexplain, which can drop an effect as large as "
              "the kept ones)", type=str, choices=("covering", "strict")),
    )

    def min_budget(self, n_features: int) -> int:
        total = n_coalitions(n_features)
        return _PROXY_MIN if total is None else min(total, _PROXY_MIN)

    def default_budget(self, n_features: int) -> int:
        # about SPEX's b = 4 design: ProxySPEX reaches SPEX's b = 6-8 quality with ~10x fewer
        want = int(min(4000, max(500, 3 * 28 * 16 + 8 * n_features)))
        total = n_coalitions(n_features)
        return want if total is None else min(total, want)

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        from ..solvers.trees import proxyspex_fit

        n = game.n_features
        p = self.params
        rng = np.random.default_rng(seed)
        masks = uniform_masks(n, int(budget or 0), rng)
        values = game(masks)
        total = n_coalitions(n)
        if total is not None and len(masks) >= total:
            # every coalition evaluated (uniform_masks returns them in all_masks order): the
            # exact spectrum; no proxy is needed, and boosted trees on 2^n rows (32 at
            # n = 5) fit a constant, i.e. scored every feature 0
            coeffs = exact_spectrum(values, n)
            info: dict[str, Any] = {"exhaustive": True}
        else:
            coeffs, info = proxyspex_fit(
                masks, values, max_order=self._order_bound(n), seed=seed,
                energy=p["energy"], grid=p["grid"], return_info=True,
                inclusive=p["energy_cut"] == "covering",
            )
            info = {"exhaustive": False, **info}
            cv = info.get("cv_r2", float("nan"))
            if len(coeffs) <= 1 and np.ptp(values) > 0:
                warnings.warn(
                    f"ProxySPEX's tree proxy fitted a constant on {len(masks)} masks "
                    f"(cross-validated R² {cv:.2f}), so every "
                    f"score is 0: raise --budget (default {self.default_budget(n)}).",
                    stacklevel=2,
                )
            elif cv < 0 and np.ptp(values) > 0:
                # (at 40-50 masks: -0.22 to -0.02, with 11 of 12 scores 0 and no word)
                warnings.warn(
                    f"ProxySPEX's tree proxy predicts held-out masks worse than their mean "
                    f"(cross-validated R² {cv:.2f} on {len(masks)} masks), so its scores are "
                    f"unreliable: raise --budget (default {self.default_budget(n)}).",
                    stacklevel=2,
                )
        extra: dict[str, Any] = {"n_samples": len(masks), **info}
        return self._explanation(coeffs, n, extra)


__all__ = ["ProxySpexExplainer", "SpexExplainer", "exact_spectrum"]
