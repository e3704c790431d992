"""Pure numerics of gradient and attention attributions: path quadrature and attention rollout.

* :func:`path_quadrature` gives the points ``alpha_k`` in [0, 1] and weights ``w_k`` of a
  rule for the path integral of integrated gradients,
  ``int_0^1 g(alpha) d alpha ~= sum_k w_k g(alpha_k)``.
* :func:`rollout_rows` gives chosen rows of the attention rollout
  ``R = A_hat^(L-1) @ ... @ A_hat^(s)`` (Abnar & Zuidema 2020) with
  ``A_hat = (1 - r) A + r I`` renormalised by rows, computed as a chain of row vectors
  (cost ``rows x S^2`` per layer instead of ``S^3``).
"""

from __future__ import annotations

import numpy as np

from ..errors import ParameterError

RULES = ("middle", "right", "gausslegendre")


def path_quadrature(steps: int, rule: str = "middle") -> tuple[np.ndarray, np.ndarray]:
    """Points (steps,) in [0, 1] and weights (steps,) summing to 1.

    middle:        alpha_k = (k - 1/2)/K, w_k = 1/K (the midpoint Riemann sum)
    right:         alpha_k = k/K, w_k = 1/K (GiLOT's Eq. 10)
    gausslegendre: Gauss-Legendre nodes mapped to [0, 1] (Captum's default)
    """
    if int(steps) < 1:
        raise ParameterError(f"The number of path steps must be >= 1. Got {steps!r} instead.")
    k = int(steps)
    if rule == "middle":
        return (np.arange(k) + 0.5) / k, np.full(k, 1.0 / k)
    if rule == "right":
        return np.arange(1, k + 1) / k, np.full(k, 1.0 / k)
    if rule == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(k)
        return (x + 1.0) / 2.0, w / 2.0
    raise ParameterError(f"The path rule must be one of {', '.join(RULES)}. Got {rule!r} instead.")


def residual_attention(attn: np.ndarray, residual: float = 0.5) -> np.ndarray:
    """``(1 - r) A + r I``, rows renormalised to sum 1. attn: (..., S, S)."""
    a = np.asarray(attn, dtype=np.float64)
    s = a.shape[-1]
    out = (1.0 - residual) * a + residual * np.eye(s)
    return out / out.sum(-1, keepdims=True)


def rollout_rows(
    attn: np.ndarray, rows: np.ndarray, *, start: int = 0, residual: float = 0.5
) -> np.ndarray:
    """Rows of the attention rollout from layer ``start`` to the last layer.

    attn:     (n_layers, S, S) attention maps (heads already combined), query rows
    rows:     (R,) row indices (query positions) to return
    start:    first layer included (0 = all layers)
    residual: weight r of the identity (the residual stream); 0.5 as in Abnar & Zuidema
    returns:  (R, S) rows of ``A_hat^(L-1) @ ... @ A_hat^(start)``; each row sums to 1
    """
    attn = np.asarray(attn)
    if attn.ndim != 3 or attn.shape[1] != attn.shape[2]:
        raise ParameterError(f"attn must have shape (n_layers, S, S); got {attn.shape}.")
    n_layers = attn.shape[0]
    if not 0 <= start < n_layers:
        raise ParameterError(
            f"The rollout start layer must be in [0, {n_layers - 1}]; got {start}."
        )
    rows = np.asarray(rows, dtype=np.int64)
    v = residual_attention(attn[-1], residual)[rows]
    for layer in range(n_layers - 2, start - 1, -1):
        v = v @ residual_attention(attn[layer], residual)
    return v
