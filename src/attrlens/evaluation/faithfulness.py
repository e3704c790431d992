"""Faithfulness R² (METHODS.md §5.2) and top-k removal (§5.4) of attributions on a game.

Faithfulness: N_test = 1000 masks drawn uniformly from {0,1}^n (seeded, shared by all
methods; drawn from a salted stream of the seed, so they are independent of the masks a
method draws with the same seed: ``default_rng(seed)`` would give banzhaf, faith_banzhaf
and proxyspex their own training masks as the first test masks), R² = 1 - Σ(v - v̂)² /
Σ(v - v̄)² of the method's prediction v̂ against the true values v (scikit-learn's
``r2_score``; NaN when v is constant on the test set: 0/0). The prediction is the method's
own surrogate where it has one:

* ``fourier``  v̂(z) = Σ_k F(k) (-1)^{<z,k>}                   (spex, proxyspex)
* ``mobius``   v̂(z) = Σ_S a(S) Π_{i∈S} z_i, ∅ = intercept       (banzhaf, faith_banzhaf,
               kernel_shap = v(0) + φᵀz: SV as first-order Möbius terms plus v(0))
* ``linear``   v̂(z) = β0 + βᵀz from ``extra["intercept"]`` and the scores   (lime)

Methods record it in their result's ``extra["metadata"]["surrogate"]`` ({"basis", "terms"}).
Methods without a surrogate (LOO, GiLOT, ...) get a *calibrated* R²: v̂(z) = α + γ Σ_i
attr_i (1 - z_i), with α, γ fitted on 200 further uniform masks; it is marked
``kind="calibrated"`` and is not comparable 1:1 with a surrogate R².

Top-k removal: for r = 1..R remove a set R_r chosen from the attribution and measure the
true relative change Δ_r = |v(1) - v(1_{-R_r})| / |v(1)|. Marginal methods remove the top-r
features by signed score ("decrease" removes the most positive, "increase" the most
negative); interaction methods choose R_r by greedy search on their surrogate v̂(1_{-R}).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError, ParameterError
from ..games import Game, as_game
from ..params import check_param
from ..solvers.regression import weighted_r2

SURROGATE_BASES = ("fourier", "mobius")


@dataclass(frozen=True)
class Faithfulness:
    """One faithfulness measurement: ``r2`` on ``n_test`` masks, ``kind`` = "surrogate" or
    "calibrated" (the latter with the fitted ``calibration`` = (α, γ))."""

    r2: float
    kind: str
    n_test: int
    calibration: tuple[float, float] | None = None


#: salts of the evaluation's own mask streams: ``default_rng([seed, salt])`` shares nothing
#: with ``default_rng(seed)``, the stream the methods draw their samples from (and the LDS
#: stream has a salt of its own, lds._SALT)
_TEST_SALT = 0x7E57
_CALIBRATION_SALT = 0xCA11

#: how the R² test and calibration masks are drawn (recorded with each evaluation)
MASK_STREAM = "salted"


def uniform_test_masks(n: int, n_test: int = 1000, *, seed: int = 0) -> np.ndarray:
    """(n_test, n) masks with each feature kept independently with probability 1/2, from a
    stream of ``seed`` held out from every method's draws with the same seed."""
    check_param("uniform_test_masks", "n_test", n_test, kind=int, low=1)
    return np.random.default_rng([int(seed), _TEST_SALT]).random((n_test, n)) < 0.5


def calibration_masks(n: int, n_calibration: int = 200, *, seed: int = 0) -> np.ndarray:
    """(n_calibration, n) uniform masks of the calibrated R²'s fit, from a stream of ``seed``
    apart from the test masks and from every method's draws."""
    check_param("calibration_masks", "n_calibration", n_calibration, kind=int, low=1)
    return np.random.default_rng([int(seed), _CALIBRATION_SALT]).random((n_calibration, n)) < 0.5


def _metadata(attr: Any) -> dict[str, Any]:
    extra = getattr(attr, "extra", None) or {}
    return extra.get("metadata", {}) or {}


def surrogate_terms(attr: Any) -> tuple[str, list[tuple[tuple[int, ...], float]]] | None:
    """(basis, [(subset, value)]) of the attribution's surrogate, or None if it has none."""
    meta = _metadata(attr)
    sur = meta.get("surrogate")
    if sur:
        basis = sur.get("basis")
        if basis not in SURROGATE_BASES:
            raise InputError(f"Unknown surrogate basis {basis!r}; expected one of {SURROGATE_BASES}.")
        return basis, [(tuple(int(i) for i in t["features"]), float(t["value"])) for t in sur["terms"]]
    inter = getattr(attr, "interactions", None)
    if inter and inter.get("index") in SURROGATE_BASES and inter.get("order") is None:
        # a full Fourier or Möbius dictionary is itself a surrogate
        return inter["index"], [
            (tuple(int(i) for i in t["features"]), float(t["value"])) for t in inter["terms"]
        ]
    if "intercept" in meta:  # linear surrogate β0 + βᵀz (LIME)
        scores = np.asarray(attr.scores, dtype=float)
        terms = [((), float(meta["intercept"]))] + [((i,), float(s)) for i, s in enumerate(scores)]
        return "mobius", terms
    return None


def predict_terms(basis: str, terms: list[tuple[tuple[int, ...], float]], masks: np.ndarray) -> np.ndarray:
    """v̂ of a Fourier or Möbius dictionary on masks (m, n) bool (1 = keep)."""
    masks = np.asarray(masks, dtype=bool)
    out = np.zeros(len(masks))
    for S, val in terms:
        if not S:
            out += val
        elif basis == "fourier":
            parity = masks[:, list(S)].sum(1) % 2
            out += val * (1.0 - 2.0 * parity)
        else:
            out += val * masks[:, list(S)].all(1)
    return out


def predict_surrogate(attr: Any, masks: np.ndarray) -> np.ndarray | None:
    """The attribution's surrogate prediction v̂ (m,) on ``masks``, or None without one."""
    sur = surrogate_terms(attr)
    if sur is None:
        return None
    return predict_terms(sur[0], sur[1], masks)


def has_interactions(attr: Any) -> bool:
    """True if the attribution's surrogate has terms of order 2 or more."""
    sur = surrogate_terms(attr)
    return sur is not None and any(len(S) >= 2 and v != 0 for S, v in sur[1])


def faithfulness_r2(
    attr: Any,
    game: Any,
    *,
    n_test: int = 1000,
    seed: int = 0,
    test_masks: np.ndarray | None = None,
    mode: str = "auto",
    n_calibration: int = 200,
) -> Faithfulness:
    """Test R² of an attribution's prediction of the game's values (METHODS.md §5.2).

    attr:        an :class:`~attrlens.result.Attribution`
    game:        the game it explains (a Game, or a callable with ``n_features`` = len(scores));
                 pass the same memoising Game to every method so the test set is evaluated once
    test_masks:  (n_test, n) masks (default: ``uniform_test_masks(n, n_test, seed=seed)``)
    mode:        "auto" (surrogate if the method has one, else calibrated), "surrogate",
                 "calibrated"
    n_calibration: masks of the calibration set (:func:`calibration_masks` of ``seed``)
    """
    check_param("faithfulness_r2", "mode", mode, choices=("auto", "surrogate", "calibrated"))
    scores = np.asarray(attr.scores, dtype=float)
    n = len(scores)
    game = as_game(game, n) if not isinstance(game, Game) else game
    if game.n_features != n:
        raise InputError(f"The game has {game.n_features} features but the attribution has {n}.")
    if test_masks is None:
        test_masks = uniform_test_masks(n, n_test, seed=seed)
    test_masks = np.asarray(test_masks, dtype=bool)
    y = game(test_masks)
    yhat = predict_surrogate(attr, test_masks) if mode != "calibrated" else None
    if yhat is not None:
        return Faithfulness(_r2(y, yhat), "surrogate", len(test_masks))
    if mode == "surrogate":
        raise ParameterError(
            f"The method '{getattr(attr, 'method', '?')}' has no surrogate; use mode='calibrated'."
        )
    check_param("faithfulness_r2", "n_calibration", n_calibration, kind=int, low=2)
    cal = calibration_masks(n, n_calibration, seed=seed)
    alpha, gamma = _calibrate(scores, cal, game(cal))
    yhat = alpha + gamma * ((~test_masks) @ scores)
    return Faithfulness(_r2(y, yhat), "calibrated", len(test_masks), (alpha, gamma))


def _r2(y: np.ndarray, yhat: np.ndarray) -> float:
    """R² = 1 - Σ(v - v̂)² / Σ(v - v̄)²; NaN when the true values are constant (0/0: nothing
    to explain, as LDS is NaN; scikit-learn's r2_score gives 1.0 or 0.0 there)."""
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if y.size < 2 or np.all(y == y[0]):
        return float("nan")
    return weighted_r2(y, yhat)


def _calibrate(scores: np.ndarray, masks: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Least-squares (α, γ) of y ≈ α + γ Σ_i attr_i (1 - z_i)."""
    x = (~masks) @ scores
    A = np.column_stack([np.ones_like(x), x])
    (alpha, gamma), *_ = np.linalg.lstsq(A, y, rcond=None)
    return float(alpha), float(gamma)


# ---- top-k removal ---------------------------------------------------------------------
def removal_sets(
    attr: Any, r_max: int = 10, *, direction: str = "decrease", strategy: str = "auto"
) -> list[np.ndarray]:
    """The removal sets R_1..R_rmax (arrays of feature indices) chosen from ``attr``.

    strategy: "scores" (top-r by signed score), "surrogate" (greedy on v̂(1_{-R})), or "auto"
    (surrogate for interaction methods, scores otherwise).
    """
    check_param("removal_sets", "direction", direction, choices=("decrease", "increase"))
    check_param("removal_sets", "strategy", strategy, choices=("auto", "scores", "surrogate"))
    scores = np.asarray(attr.scores, dtype=float)
    n = len(scores)
    r_max = min(r_max, n - 1) if n > 1 else 1
    use_sur = strategy == "surrogate" or (strategy == "auto" and has_interactions(attr))
    if not use_sur:
        key = -scores if direction == "decrease" else scores
        order = np.argsort(key, kind="stable")
        return [order[:r] for r in range(1, r_max + 1)]
    sur = surrogate_terms(attr)
    if sur is None:
        raise ParameterError(f"The method '{getattr(attr, 'method', '?')}' has no surrogate.")
    basis, terms = sur
    sign = 1.0 if direction == "decrease" else -1.0  # minimise sign * v̂
    removed: list[int] = []
    mask = np.ones(n, dtype=bool)
    out = []
    for _ in range(r_max):
        cand = np.flatnonzero(mask)
        trial = np.repeat(mask[None], len(cand), axis=0)
        trial[np.arange(len(cand)), cand] = False
        vals = sign * predict_terms(basis, terms, trial)
        best = int(cand[int(np.argmin(vals))])
        removed.append(best)
        mask[best] = False
        out.append(np.asarray(removed))
    return out


def topk_removal(
    attr: Any,
    game: Any,
    *,
    r_max: int = 10,
    direction: str = "decrease",
    strategy: str = "auto",
) -> np.ndarray:
    """Δ_r = |v(1) - v(1_{-R_r})| / |v(1)| for r = 1..min(r_max, n-1) (METHODS.md §5.4)."""
    scores = np.asarray(attr.scores, dtype=float)
    n = len(scores)
    game = as_game(game, n) if not isinstance(game, Game) else game
    sets = removal_sets(attr, r_max, direction=direction, strategy=strategy)
    masks = np.ones((len(sets) + 1, n), dtype=bool)
    for r, R in enumerate(sets, start=1):
        masks[r, R] = False
    v = game(masks)
    if v[0] == 0:
        raise InputError(
            "v(all features) is 0, so the relative change is undefined; use a value on a "
            "scale where it is not 0 (e.g. the log-probability target)."
        )
    return np.abs(v[0] - v[1:]) / abs(v[0])
