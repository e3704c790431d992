"""Tests of the weighted linear surrogates and gSMILE's fidelity metrics."""

from __future__ import annotations

import numpy as np
import pytest

from attrlens.errors import InputError, ParameterError
from attrlens.solvers.regression import (
    fidelity_metrics,
    weighted_ols,
    weighted_r2,
    weighted_ridge,
)


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    X = (rng.random((40, 6)) < 0.5).astype(float)
    y = X @ np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0]) + 0.7 + 0.3 * rng.normal(size=40)
    w = rng.random(40) + 0.1
    return X, y, w


def test_ols_recovers_a_linear_game_exactly():
    rng = np.random.default_rng(1)
    Z = rng.random((30, 5)) < 0.5  # bool masks, as the explainers pass them
    beta = np.array([0.3, -1.2, 2.0, 0.0, 0.8])
    y = 1.5 + Z @ beta
    w = rng.random(30) + 0.01
    coef, intercept = weighted_ols(Z, y, w)
    np.testing.assert_allclose(coef, beta, atol=1e-10)
    assert intercept == pytest.approx(1.5, abs=1e-10)
    assert weighted_r2(y, Z @ coef + intercept, w) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("alpha", [0.0, 0.1, 1.0, 25.0])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_ridge_equals_sklearn_with_sample_weight(data, alpha, fit_intercept):
    linear_model = pytest.importorskip("sklearn.linear_model")
    X, y, w = data
    coef, intercept = weighted_ridge(X, y, w, alpha=alpha, fit_intercept=fit_intercept)
    if alpha == 0:
        ref = linear_model.LinearRegression(fit_intercept=fit_intercept)
    else:
        ref = linear_model.Ridge(alpha=alpha, fit_intercept=fit_intercept, solver="svd")
    ref.fit(X, y, sample_weight=w)
    np.testing.assert_allclose(coef, ref.coef_, atol=1e-8)
    assert intercept == pytest.approx(float(ref.intercept_), abs=1e-8)


def test_intercept_is_not_penalised(data):
    X, y, w = data
    # a huge penalty shrinks the coefficients to 0 but the intercept goes to the weighted
    # mean of y, not to 0
    coef, intercept = weighted_ridge(X, y, w, alpha=1e12)
    assert np.abs(coef).max() < 1e-9
    assert intercept == pytest.approx(np.average(y, weights=w), abs=1e-8)
    # shifting y shifts only the intercept
    c1, i1 = weighted_ridge(X, y, w, alpha=1.0)
    c2, i2 = weighted_ridge(X, y + 100.0, w, alpha=1.0)
    np.testing.assert_allclose(c1, c2, atol=1e-10)
    assert i2 - i1 == pytest.approx(100.0, abs=1e-9)
    # without an intercept the penalty has nothing to leave alone
    c3, i3 = weighted_ridge(X, y, w, alpha=1.0, fit_intercept=False)
    assert i3 == 0.0
    assert np.abs(c3 - c1).max() > 1e-3


def test_ridge_shrinks_with_alpha(data):
    X, y, w = data
    norms = [np.linalg.norm(weighted_ridge(X, y, w, alpha=a)[0]) for a in (0.0, 1.0, 10.0, 100.0)]
    assert np.all(np.diff(norms) < 0)


def test_weights_matter_and_uniform_weights_match_none(data):
    X, y, w = data
    c_none, i_none = weighted_ridge(X, y, None)
    c_one, i_one = weighted_ridge(X, y, np.full(len(y), 3.0), alpha=3.0)
    # scaling all weights by 3 and alpha by 3 is the same problem
    np.testing.assert_allclose(c_none, c_one, atol=1e-12)
    assert i_none == pytest.approx(i_one, abs=1e-12)
    c_w, _ = weighted_ridge(X, y, w)
    assert np.abs(c_w - c_none).max() > 1e-3
    # zero weight = sample dropped
    w0 = w.copy()
    w0[:5] = 0.0
    c_a, i_a = weighted_ridge(X, y, w0)
    c_b, i_b = weighted_ridge(X[5:], y[5:], w[5:])
    np.testing.assert_allclose(c_a, c_b, atol=1e-10)
    assert i_a == pytest.approx(i_b, abs=1e-10)


def test_ols_rank_deficient_gives_the_least_norm_solution():
    rng = np.random.default_rng(2)
    x = (rng.random((20, 1)) < 0.5).astype(float)
    X = np.hstack([x, x, (rng.random((20, 1)) < 0.5)])  # duplicate column
    y = 2.0 * x[:, 0] + X[:, 2] - 0.5
    coef, intercept = weighted_ols(X, y)
    # the weight of the duplicated feature is split evenly (least norm), fit is exact
    np.testing.assert_allclose(coef, [1.0, 1.0, 1.0], atol=1e-10)
    assert intercept == pytest.approx(-0.5, abs=1e-10)


def test_multi_target(data):
    X, y, w = data
    Y = np.stack([y, 2 * y - 1], axis=1)
    coef, intercept = weighted_ridge(X, Y, w, alpha=0.5)
    c0, i0 = weighted_ridge(X, y, w, alpha=0.5)
    c1, i1 = weighted_ridge(X, 2 * y - 1, w, alpha=0.5)
    np.testing.assert_allclose(coef, np.stack([c0, c1]), atol=1e-10)
    np.testing.assert_allclose(intercept, [i0, i1], atol=1e-10)


def test_weighted_r2():
    y = np.array([1.0, 2.0, 3.0, 4.0])
    yhat = np.array([1.5, 2.0, 2.5, 4.0])
    w = np.array([1.0, 2.0, 1.0, 0.5])
    ybar = (w @ y) / w.sum()
    expected = 1 - (w @ (y - yhat) ** 2) / (w @ (y - ybar) ** 2)
    assert weighted_r2(y, yhat, w) == pytest.approx(expected, abs=1e-12)
    unweighted = 1 - ((y - yhat) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    assert weighted_r2(y, yhat) == pytest.approx(unweighted, abs=1e-12)
    assert weighted_r2(y, np.full(4, ybar), w) == pytest.approx(0.0, abs=1e-12)
    # constant targets: perfect fit 1, otherwise 0
    assert weighted_r2(np.ones(3), np.ones(3)) == 1.0
    assert weighted_r2(np.ones(3), np.array([1.0, 2.0, 1.0])) == 0.0


def test_fidelity_metrics_by_hand():
    y = np.array([1.0, 0.0, 2.0, 1.0, 3.0])
    yhat = np.array([0.5, 0.0, 2.5, 1.0, 2.0])
    w = np.array([1.0, 0.5, 1.0, 2.0, 0.5])
    e = y - yhat  # [0.5, 0, -0.5, 0, 1]
    m = fidelity_metrics(y, yhat, w, n_params=2)
    assert m["weighted_mse"] == pytest.approx((0.25 + 0.25 + 0.5) / 5.0, abs=1e-12)
    assert m["weighted_mae"] == pytest.approx((0.5 + 0.5 + 0.5) / 5.0, abs=1e-12)
    assert m["mean_loss"] == pytest.approx(abs(7.0 / 5 - 6.0 / 5), abs=1e-12)
    assert m["mean_l1"] == pytest.approx(2.0 / 5, abs=1e-12)
    assert m["mean_l2"] == pytest.approx(1.5 / 5, abs=1e-12)
    assert m["weighted_l1"] == pytest.approx(np.sum(w * np.abs(e)) / 5, abs=1e-12)
    assert m["weighted_l2"] == pytest.approx(np.sum(w * e**2) / 5, abs=1e-12)
    r2 = weighted_r2(y, yhat, w)
    assert m["weighted_r2"] == pytest.approx(r2, abs=1e-12)
    assert m["adjusted_weighted_r2"] == pytest.approx(1 - (1 - r2) * 4 / 2, abs=1e-12)
    # too many parameters for the adjusted R^2
    assert np.isnan(fidelity_metrics(y, yhat, w, n_params=4)["adjusted_weighted_r2"])


def test_errors(data):
    X, y, w = data
    with pytest.raises(ParameterError, match="'alpha'"):
        weighted_ridge(X, y, w, alpha=-1.0)
    with pytest.raises(InputError, match="rows"):
        weighted_ridge(X, y[:-1], w)
    with pytest.raises(InputError, match="weights"):
        weighted_ridge(X, y, -w)
    with pytest.raises(InputError, match="weights"):
        weighted_ridge(X, y, np.zeros_like(w))
    with pytest.raises(InputError, match="finite"):
        weighted_ridge(np.where(X > 0, np.nan, X), y, w)
    with pytest.raises(InputError, match="same length"):
        weighted_r2(y, y[:-1])
    with pytest.raises(ParameterError, match="'n_params'"):
        fidelity_metrics(y, y, w, n_params=-1)
