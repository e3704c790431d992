"""Weighted linear surrogates (LIME / gSMILE / RoPE-LIME) and their fidelity metrics.

The surrogate is ``min_{b0, b} sum_i w_i (y_i - b0 - x_i^T b)^2 + alpha ||b||^2`` with an
unpenalised intercept (METHODS §1(b) step 5, §2(b) step 7), solved by scikit-learn
(``Ridge``/``LinearRegression`` with ``sample_weight``; ``r2_score`` for the weighted R^2).
The functions here only check inputs with attrlens' messages and fix the output shapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attrlens.errors import InputError
from attrlens.params import check_param

__all__ = ["design_rank", "fidelity_metrics", "value_scale", "weighted_ols", "weighted_r2", "weighted_ridge"]


def weighted_ridge(
    X: Any,
    y: Any,
    w: Any = None,
    *,
    alpha: float = 1.0,
    fit_intercept: bool = True,
) -> tuple[np.ndarray, float | np.ndarray]:
    """Weighted ridge regression with an unpenalised intercept (scikit-learn's ``Ridge``).

    Args:
        X: design, ``(n_samples, n_features)`` (bool masks are fine).
        y: targets, ``(n_samples,)`` or ``(n_samples, n_targets)``.
        w: non-negative sample weights ``(n_samples,)``, not all zero; uniform if None.
        alpha: L2 penalty on the coefficients (not on the intercept); 0 gives weighted OLS
            (``LinearRegression``, the least-norm solution of a rank-deficient design).
        fit_intercept: fit ``b0``; if False the model has none.

    Returns:
        ``(coef, intercept)``: coef ``(n_features,)`` (or ``(n_targets, n_features)``),
        intercept a float (or ``(n_targets,)``; 0 without intercept), i.e.
        ``Ridge(alpha, fit_intercept).fit(X, y, sample_weight=w)``'s ``coef_, intercept_``.
    """
    from sklearn.linear_model import LinearRegression, Ridge

    check_param("weighted_ridge", "alpha", alpha, low=0.0)
    xa, ya, wa = _check_xyw(X, y, w)
    keep = wa > 0  # zero-weight rows change nothing; sklearn's solvers may dislike them
    model = (LinearRegression(fit_intercept=fit_intercept) if alpha == 0
             else Ridge(alpha=float(alpha), fit_intercept=fit_intercept, solver="svd"))
    # the solution is scale-equivariant (y/s gives coef/s, the penalty included), so solve
    # at unit scale: values near the float range's ends would overflow in the solvers' squares
    s = value_scale(ya)
    model.fit(xa[keep], ya[keep] / s, sample_weight=wa[keep])
    coef = np.asarray(model.coef_, dtype=np.float64) * s
    intercept = np.asarray(model.intercept_, dtype=np.float64) * s
    if ya.ndim > 1:
        return coef, np.broadcast_to(np.asarray(intercept, dtype=np.float64), (ya.shape[1],)).copy()
    return coef.reshape(-1), float(intercept.reshape(-1)[0])


def weighted_ols(
    X: Any, y: Any, w: Any = None, *, fit_intercept: bool = True
) -> tuple[np.ndarray, float | np.ndarray]:
    """Weighted least squares (gSMILE's surrogate): :func:`weighted_ridge` with alpha 0."""
    return weighted_ridge(X, y, w, alpha=0.0, fit_intercept=fit_intercept)


def weighted_r2(y: Any, yhat: Any, w: Any = None) -> float:
    """Weighted R^2 ``1 - sum w (y - yhat)^2 / sum w (y - ybar_w)^2`` (sklearn's ``r2_score``
    with ``sample_weight``): 1.0 for a perfect fit of a constant y, 0.0 otherwise."""
    from sklearn.metrics import r2_score

    ya, ha, wa = _check_pred(y, yhat, w)
    s = value_scale(ya, ha)  # R^2 is scale-free; unit scale keeps its squares finite
    return float(r2_score(ya / s, ha / s, sample_weight=wa))


def design_rank(X: Any, *, max_elements: int = 4_000_000) -> int | None:
    """How many coefficients of a linear fit with an intercept the design ``X`` (m, p)
    determines: rank([1, X]) - 1 over its distinct rows, p when it is full. None when the
    distinct design exceeds ``max_elements`` entries (not computed: too costly to check)."""
    xa = np.asarray(X, dtype=float)
    if xa.size > max_elements:
        return None
    xa = np.unique(xa, axis=0)
    return int(np.linalg.matrix_rank(np.column_stack([np.ones(len(xa)), xa]))) - 1


def value_scale(*arrays: Any) -> float:
    """The largest magnitude among the arrays: a fit or an R^2 computed on values divided by
    it cannot overflow in its squares (1.0 when they are all zero or not all finite)."""
    s = max((float(np.abs(np.asarray(a, dtype=float)).max()) for a in arrays
             if np.size(a)), default=0.0)
    return s if 0.0 < s < np.inf else 1.0


def fidelity_metrics(y: Any, yhat: Any, w: Any, n_params: int) -> dict[str, float]:
    """gSMILE's fidelity metrics of a surrogate on its perturbation set (METHODS §2(d)).

    Args:
        y: targets ``(n,)``; yhat: surrogate predictions ``(n,)``;
        w: sample (kernel) weights ``(n,)``;
        n_params: number of surrogate coefficients ``p`` (without the intercept), used by
            the adjusted R^2.

    Returns:
        dict with ``weighted_mse`` ``sum w e^2 / sum w``, ``weighted_mae``
        ``sum w |e| / sum w``, ``mean_loss`` ``|mean y - mean yhat|``, ``mean_l1``
        ``mean |e|``, ``mean_l2`` ``mean e^2``, ``weighted_l1`` ``sum w |e| / n``,
        ``weighted_l2`` ``sum w e^2 / n``, ``weighted_r2`` and ``adjusted_weighted_r2``
        ``1 - (1 - R2_w)(n - 1)/(n - p - 1)`` (NaN when ``n - p - 1 <= 0``), with
        ``e = y - yhat`` (xwhy ``compute_regression_metrics``).
    """
    check_param("fidelity_metrics", "n_params", n_params, kind=int, low=0)
    ya, ha, wa = _check_pred(y, yhat, w)
    e = ya - ha
    n = ya.shape[0]
    r2 = weighted_r2(ya, ha, wa)
    dof = n - n_params - 1
    adj = 1.0 - (1.0 - r2) * (n - 1) / dof if dof > 0 else float("nan")
    return {
        "weighted_mse": float(wa @ e**2 / wa.sum()),
        "weighted_mae": float(wa @ np.abs(e) / wa.sum()),
        "mean_loss": float(abs(ya.mean() - ha.mean())),
        "mean_l1": float(np.abs(e).mean()),
        "mean_l2": float((e**2).mean()),
        "weighted_l1": float(wa @ np.abs(e) / n),
        "weighted_l2": float(wa @ e**2 / n),
        "weighted_r2": r2,
        "adjusted_weighted_r2": float(adj),
    }


def _check_weights(w: Any, n: int) -> np.ndarray:
    if w is None:
        return np.ones(n)
    wa = np.asarray(w, dtype=float)
    if wa.shape != (n,):
        raise InputError(f"Sample weights must have shape ({n},); got {wa.shape}.")
    if not bool(np.isfinite(wa).all()) or bool((wa < 0).any()) or wa.sum() <= 0:
        raise InputError("Sample weights must be finite, non-negative and not all zero.")
    return wa


def _check_xyw(X: Any, y: Any, w: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xa = np.asarray(X, dtype=float)
    ya = np.asarray(y, dtype=float)
    if xa.ndim != 2 or xa.shape[0] == 0:
        raise InputError(f"X must be a non-empty (n_samples, n_features) array; got {xa.shape}.")
    if ya.ndim not in (1, 2) or ya.shape[0] != xa.shape[0]:
        raise InputError(
            f"y must have {xa.shape[0]} rows (one per row of X); got shape {ya.shape}."
        )
    if not bool(np.isfinite(xa).all()) or not bool(np.isfinite(ya).all()):
        raise InputError("X and y must be finite (no NaN or inf).")
    return xa, ya, _check_weights(w, xa.shape[0])


def _check_pred(y: Any, yhat: Any, w: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    ya = np.asarray(y, dtype=float).ravel()
    ha = np.asarray(yhat, dtype=float).ravel()
    if ya.shape != ha.shape or ya.size == 0:
        raise InputError(
            f"y and yhat must be non-empty with the same length; got {ya.size} and {ha.size}."
        )
    if not bool(np.isfinite(ya).all()) or not bool(np.isfinite(ha).all()):
        raise InputError("y and yhat must be finite (no NaN or inf).")
    return ya, ha, _check_weights(w, ya.size)
