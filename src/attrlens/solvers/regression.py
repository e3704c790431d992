"""Weighted linear surrogates and their fit metrics (pure numpy).

weighted_ridge: argmin_{b0, b} Σ_i w_i (y_i - b0 - x_iᵀb)² + α‖b‖², intercept unpenalised
(solved after centring by weighted means).
"""

from __future__ import annotations

import numpy as np


def _prep(X: np.ndarray, y: np.ndarray, w: np.ndarray | None):
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"X must be (m, n) and y (m,); got {X.shape} and {y.shape}.")
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=float)
    if w.shape != y.shape or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("Weights must be non-negative, one per sample, not all zero.")
    return X, y, w


def weighted_ridge(
    X: np.ndarray,
    y: np.ndarray,
    w: np.ndarray | None = None,
    *,
    alpha: float = 1.0,
    fit_intercept: bool = True,
) -> tuple[np.ndarray, float]:
    """Weighted ridge regression; returns (coef (n,), intercept)."""
    X, y, w = _prep(X, y, w)
    if fit_intercept:
        xm = (w[:, None] * X).sum(0) / w.sum()
        ym = float((w * y).sum() / w.sum())
        Xc, yc = X - xm, y - ym
    else:
        xm, ym, Xc, yc = np.zeros(X.shape[1]), 0.0, X, y
    sw = np.sqrt(w)
    A = Xc * sw[:, None]
    b = yc * sw
    if alpha > 0:
        n = X.shape[1]
        coef = np.linalg.solve(A.T @ A + alpha * np.eye(n), A.T @ b)
    else:
        coef = np.linalg.lstsq(A, b, rcond=None)[0]
    intercept = ym - float(xm @ coef) if fit_intercept else 0.0
    return coef, intercept


def weighted_ols(
    X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None, *, fit_intercept: bool = True
) -> tuple[np.ndarray, float]:
    """Weighted least squares (minimum-norm solution when under-determined)."""
    return weighted_ridge(X, y, w, alpha=0.0, fit_intercept=fit_intercept)


def weighted_r2(y: np.ndarray, yhat: np.ndarray, w: np.ndarray | None = None) -> float:
    """1 - Σw(y-ŷ)² / Σw(y-ȳ_w)²  (1.0 when y is constant and perfectly fitted)."""
    y = np.asarray(y, dtype=float)
    yhat = np.asarray(yhat, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    ybar = (w * y).sum() / w.sum()
    ss_res = float((w * (y - yhat) ** 2).sum())
    ss_tot = float((w * (y - ybar) ** 2).sum())
    if ss_tot <= 1e-300:
        return 1.0 if ss_res <= 1e-300 else 0.0
    return 1.0 - ss_res / ss_tot


def fidelity_metrics(
    y: np.ndarray, yhat: np.ndarray, w: np.ndarray | None = None, n_params: int = 1
) -> dict[str, float]:
    """gSMILE's fidelity metrics of a surrogate on its perturbation set."""
    y = np.asarray(y, dtype=float)
    yhat = np.asarray(yhat, dtype=float)
    w = np.ones_like(y) if w is None else np.asarray(w, dtype=float)
    m = len(y)
    err = y - yhat
    r2w = weighted_r2(y, yhat, w)
    denom = m - n_params - 1
    return {
        "weighted_mse": float((w * err**2).sum() / w.sum()),
        "weighted_mae": float((w * np.abs(err)).sum() / w.sum()),
        "mean_loss": float(abs(y.mean() - yhat.mean())),
        "mean_l1": float(np.abs(err).mean()),
        "mean_l2": float((err**2).mean()),
        "weighted_l1": float((w * np.abs(err)).sum() / m),
        "weighted_l2": float((w * err**2).sum() / m),
        "weighted_r2": r2w,
        "adjusted_weighted_r2": float(1 - (1 - r2w) * (m - 1) / denom) if denom > 0 else float("nan"),
    }
