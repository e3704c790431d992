"""Weighted linear surrogates (LIME / gSMILE / RoPE-LIME) and their fidelity metrics.

The surrogate is ``min_{b0, b} sum_i w_i (y_i - b0 - x_i^T b)^2 + alpha ||b||^2`` with an
unpenalised intercept (METHODS §1(b) step 5, §2(b) step 7). Centering ``X`` and ``y`` by
their weighted means removes ``b0`` exactly; the rest is solved through an SVD of the
``sqrt(w)``-scaled centred design, which handles rank-deficient designs (duplicate or
constant features) and ``alpha = 0`` (least-norm weighted OLS) on the same path.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attrlens.errors import InputError
from attrlens.params import check_param

__all__ = ["fidelity_metrics", "weighted_ols", "weighted_r2", "weighted_ridge"]


def weighted_ridge(
    X: Any,
    y: Any,
    w: Any = None,
    *,
    alpha: float = 1.0,
    fit_intercept: bool = True,
) -> tuple[np.ndarray, float | np.ndarray]:
    """Weighted ridge regression with an unpenalised intercept.

    Args:
        X: design, ``(n_samples, n_features)`` (bool masks are fine).
        y: targets, ``(n_samples,)`` or ``(n_samples, n_targets)``.
        w: non-negative sample weights ``(n_samples,)``, not all zero; uniform if None.
        alpha: L2 penalty on the coefficients (not on the intercept); 0 gives OLS.
        fit_intercept: fit ``b0`` (by weighted centering); if False the model has none.

    Returns:
        ``(coef, intercept)``: coef ``(n_features,)`` (or ``(n_targets, n_features)``),
        intercept a float (or ``(n_targets,)``; 0 without intercept). Same solution as
        scikit-learn's ``Ridge(alpha, fit_intercept).fit(X, y, sample_weight=w)``.
    """
    check_param("weighted_ridge", "alpha", alpha, low=0.0)
    xa, ya, wa = _check_xyw(X, y, w)
    if fit_intercept:
        x_mean = wa @ xa / wa.sum()
        y_mean = wa @ ya / wa.sum()
    else:
        x_mean = np.zeros(xa.shape[1])
        y_mean = np.zeros(ya.shape[1:]) if ya.ndim > 1 else 0.0
    sw = np.sqrt(wa)
    xs = (xa - x_mean) * sw[:, None]
    ys = (ya - y_mean) * (sw if ya.ndim == 1 else sw[:, None])
    u, s, vt = np.linalg.svd(xs, full_matrices=False)
    if alpha > 0:
        shrink = s / (s**2 + alpha)
    else:
        # Least-norm solution: drop directions below the usual pseudo-inverse cutoff.
        cutoff = (s.max() if s.size else 0.0) * max(xs.shape) * np.finfo(float).eps
        shrink = np.divide(1.0, s, out=np.zeros_like(s), where=s > cutoff)
    coef = vt.T @ (shrink[:, None] * (u.T @ ys)) if ya.ndim > 1 else vt.T @ (shrink * (u.T @ ys))
    intercept = y_mean - x_mean @ coef
    if ya.ndim > 1:
        return coef.T, np.asarray(intercept)
    return coef, float(intercept)


def weighted_ols(
    X: Any, y: Any, w: Any = None, *, fit_intercept: bool = True
) -> tuple[np.ndarray, float | np.ndarray]:
    """Weighted least squares (gSMILE's surrogate): :func:`weighted_ridge` with alpha 0.

    For a rank-deficient design the least-norm coefficient vector is returned (as
    ``np.linalg.lstsq`` would).
    """
    return weighted_ridge(X, y, w, alpha=0.0, fit_intercept=fit_intercept)


def weighted_r2(y: Any, yhat: Any, w: Any = None) -> float:
    """Weighted coefficient of determination ``1 - sum w (y - yhat)^2 / sum w (y - ybar_w)^2``.

    ``ybar_w`` is the weighted mean of y. If y is constant (under w) the score is 1.0 for a
    perfect fit and 0.0 otherwise, as scikit-learn's ``r2_score``.
    """
    ya, ha, wa = _check_pred(y, yhat, w)
    ss_res = float(wa @ (ya - ha) ** 2)
    ybar = float(wa @ ya / wa.sum())
    ss_tot = float(wa @ (ya - ybar) ** 2)
    if ss_tot <= 0.0:
        return 1.0 if ss_res <= 0.0 else 0.0
    return 1.0 - ss_res / ss_tot


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
