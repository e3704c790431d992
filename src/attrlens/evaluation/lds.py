"""Linear datamodeling score (LDS; ContextCite, METHODS.md §5.5).

An attribution s (n,) read as a linear model predicts the value of an ablated input
z ∈ {0,1}^n (1 = keep) as ŷ(z) = Σ_i s_i z_i. On held-out random ablations z_1..z_m, each
feature kept independently with probability ``p_keep`` (ContextCite: 1/2), LDS is the
Spearman rank correlation between ŷ(z_j) and the true values v(z_j). It needs no intercept
and no scale (a rank statistic), so it compares methods whose scores live on different
scales; 1 = the attribution orders the ablations exactly as the model does, -1 = reversed.

The ablations are drawn from their own seeded stream (``seed`` combined with a fixed salt),
so they are held out from every method's samples and from the R² test masks of the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..games import Game, as_game
from ..params import check_param, check_seed

_SALT = 0x1D5  # separates the LDS stream from the methods' and the R² masks' streams


@dataclass(frozen=True)
class LDS:
    """One LDS measurement: ``value`` (NaN when either side is constant) on ``n_test`` masks."""

    value: float
    n_test: int
    p_keep: float


def lds_masks(n: int, n_test: int = 100, *, p_keep: float = 0.5, seed: int = 0) -> np.ndarray:
    """(n_test, n) bool held-out ablations: each feature kept with probability ``p_keep``."""
    check_param("lds_masks", "n", n, kind=int, low=1)
    check_param("lds_masks", "n_test", n_test, kind=int, low=2)
    check_param("lds_masks", "p_keep", p_keep, kind=float, low=0.0, high=1.0)
    check_seed("lds_masks", seed)
    return np.random.default_rng([int(seed), _SALT]).random((n_test, n)) < p_keep


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ of two (m,) samples (average ranks for ties); NaN if either is constant."""
    from scipy.stats import rankdata

    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise InputError(f"spearman: samples differ in length ({x.size} vs {y.size}).")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise InputError("spearman: the values contain NaN or inf.")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = float(np.sqrt((rx @ rx) * (ry @ ry)))
    if den == 0.0:
        return float("nan")
    return float(np.clip((rx @ ry) / den, -1.0, 1.0))


def linear_datamodeling_score(
    scores: Any,
    game: Any,
    *,
    n_test: int = 100,
    p_keep: float = 0.5,
    seed: int = 0,
    test_masks: np.ndarray | None = None,
) -> LDS:
    """LDS of ``scores`` (n,) on ``game`` (a Game or a callable masks (m, n) -> (m,)).

    test_masks: (m, n) bool ablations to use instead of :func:`lds_masks`.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(s)):
        raise InputError("The attribution scores contain NaN or inf; LDS needs finite scores.")
    n = s.size
    game = game if isinstance(game, Game) else as_game(game, n)
    if game.n_features != n:
        raise InputError(f"The game has {game.n_features} features but the scores have {n}.")
    if test_masks is None:
        test_masks = lds_masks(n, n_test, p_keep=p_keep, seed=seed)
    masks = np.asarray(test_masks, dtype=bool)
    if masks.ndim != 2 or masks.shape[1] != n:
        raise InputError(f"LDS test masks must be (m, {n}); got {masks.shape}.")
    y = np.asarray(game(masks), dtype=np.float64).reshape(-1)
    return LDS(spearman(masks.astype(np.float64) @ s, y), len(masks), float(p_keep))


__all__ = ["LDS", "lds_masks", "linear_datamodeling_score", "spearman"]
