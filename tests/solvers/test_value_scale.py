"""Every method is equivariant to the scale of the values: a game multiplied by 1e300 or
1e-300 (or shifted by 1e8) gets the same scores times that factor, with no overflow or
underflow warning. Squares of such values leave float64's range, LightGBM keeps labels in
float32, and absolute thresholds assume values of about unit size; before the fits were
solved at unit scale, SPEX warned of a -71% fit and ProxySPEX scored every feature 0 at
1e-300, and the regressions' R^2 overflowed at 1e300."""

import warnings

import numpy as np
import pytest

import attrlens
from attrlens.solvers import regression

N = 12
W = np.zeros(N)
W[[1, 4, 7, 10]] = [1.0, -2.0, 3.0, 0.5]


def _game(scale: float, offset: float = 0.0):
    def fn(masks):
        m = masks.astype(float)
        return (m @ W + 2.0 * m[:, 2] * m[:, 3] + 1.0) * scale + offset

    return fn


METHODS = {  # method: (budget, extra params)
    "loo": (None, {}),
    "kernel_shap": (600, {}),
    "banzhaf": (600, {}),
    "faith_banzhaf": (600, {}),
    "lime": (600, {}),
    "spex": (None, {}),
    "proxyspex": (400, {"grid": "small"}),
}


@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("scale", [1e300, 1e-300])
def test_scores_scale_with_the_values(method, scale):
    budget, params = METHODS[method]
    ref = attrlens.explain_game(_game(1.0), N, method=method, budget=budget, seed=3, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow, underflow or poor-fit warning
        got = attrlens.explain_game(_game(scale), N, method=method, budget=budget, seed=3,
                                    **params)
    assert np.all(np.isfinite(got.scores))
    # the same scores up to the factor (relative 1e-9 of the largest score)
    np.testing.assert_allclose(got.scores / scale, ref.scores,
                               atol=1e-9 * np.abs(ref.scores).max())


@pytest.mark.parametrize("method", ["spex", "proxyspex"])
def test_exhaustive_spectrum_scales(method):
    # 5 features: every coalition is evaluated and the spectrum is exact; at 1e307 the
    # transform's sums of 32 values leave float64's range unless taken at unit scale
    w = np.array([1.0, -2.0, 0.5, 3.0, 0.25])
    ref = attrlens.explain_game(lambda m: m @ w, 5, method=method)
    for scale in (1e307, 1e-300):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            got = attrlens.explain_game(lambda m, s=scale: (m @ w) * s, 5, method=method)
        np.testing.assert_allclose(got.scores / scale, ref.scores, rtol=1e-12, atol=1e-15)


def test_proxyspex_sees_effects_on_a_large_offset():
    # in float32 labels 1e8 + effects of about 1 round to multiples of 8
    ref = attrlens.explain_game(_game(1.0), N, method="proxyspex", budget=400, seed=3,
                                grid="small")
    got = attrlens.explain_game(_game(1.0, 1e8), N, method="proxyspex", budget=400, seed=3,
                                grid="small")
    # the same support and values (the refit's constant is its unpenalised intercept)
    assert np.array_equal(got.scores != 0, ref.scores != 0)
    np.testing.assert_allclose(got.scores, ref.scores, atol=1e-6)
    assert np.argmax(np.abs(got.scores)) == 7  # the largest effect, 3.0


def test_regression_solvers_are_scale_equivariant():
    rng = np.random.default_rng(0)
    X = rng.integers(0, 2, (50, 4)).astype(float)
    y = X @ np.array([1.0, -1.0, 2.0, 0.5]) + 0.1 * rng.standard_normal(50)
    coef, b0 = regression.weighted_ridge(X, y, alpha=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big, big0 = regression.weighted_ridge(X, y * 1e300, alpha=0.5)
        r2 = regression.weighted_r2(y * 1e300, (X @ coef + b0) * 1e300)
    np.testing.assert_allclose(big / 1e300, coef, rtol=1e-10)
    assert big0 / 1e300 == pytest.approx(b0, rel=1e-10)
    assert r2 == pytest.approx(regression.weighted_r2(y, X @ coef + b0), rel=1e-12)
    assert regression.value_scale(np.zeros(3)) == 1.0 and regression.value_scale(np.array([-4.0, 2.0])) == 4.0
