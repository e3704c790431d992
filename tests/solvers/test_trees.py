"""ProxySPEX numerics: exact tree -> Fourier, energy truncation, ridge refit, full fit (METHODS §3.1)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from attrlens.errors import InputError, ParameterError
from attrlens.solvers.fourier import fourier_r2, predict
from attrlens.solvers.trees import lightgbm_to_fourier, proxyspex_fit, ridge_refit, truncate_energy

lgb = pytest.importorskip("lightgbm")


def _all_masks(n: int) -> np.ndarray:
    return np.array(list(itertools.product([0, 1], repeat=n)), dtype=bool)


def _hierarchical_game(z: np.ndarray) -> np.ndarray:
    """Low-order game with nested interactions (as LLM games are, per ProxySPEX)."""
    z = z.astype(float)
    return (
        1.0
        + 2.0 * z[:, 0]
        - 1.5 * z[:, 1]
        + 1.0 * z[:, 2]
        + 3.0 * z[:, 0] * z[:, 1]
        - 2.0 * z[:, 2] * z[:, 3]
        + 2.5 * z[:, 0] * z[:, 1] * z[:, 4]
        + 0.5 * z[:, 5]
    )


def test_tree_spectrum_reproduces_booster_predictions_exactly() -> None:
    n = 7
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2, size=(600, n)).astype(float)
    y = _hierarchical_game(x) + 0.3 * rng.normal(size=600)
    model = lgb.LGBMRegressor(
        n_estimators=40, max_depth=4, learning_rate=0.2, verbose=-1, random_state=0, n_jobs=1
    ).fit(x, y)
    coeffs = lightgbm_to_fourier(model, n)
    z = _all_masks(n)
    np.testing.assert_allclose(predict(coeffs, z), model.predict(z.astype(float)), atol=1e-9)
    assert max(len(k) for k in coeffs) <= 4  # at most depth-many features per path
    # a raw Booster works the same
    coeffs_b = lightgbm_to_fourier(model.booster_, n)
    assert coeffs_b.keys() == coeffs.keys()


class _FakeBooster:
    """A hand-written dump_model() to pin LightGBM's routing rules."""

    def __init__(self, tree: dict):
        self.tree = tree

    def dump_model(self) -> dict:
        return {"num_tree_per_iteration": 1, "tree_info": [{"tree_structure": self.tree}]}


def _leaf(v: float) -> dict:
    return {"leaf_value": v}


def test_routing_rules_zero_as_missing_and_repeated_features() -> None:
    # missing_type "Zero" with default_left False sends z_i = 0 RIGHT (1 <= 1.5 goes left)
    tree = {
        "split_feature": 0,
        "threshold": 1.5,
        "decision_type": "<=",
        "default_left": False,
        "missing_type": "Zero",
        "left_child": _leaf(1.0),
        "right_child": _leaf(5.0),
    }
    coeffs = lightgbm_to_fourier(_FakeBooster(tree), 2)
    np.testing.assert_allclose(predict(coeffs, np.array([[0, 0], [1, 0]], dtype=bool)), [5.0, 1.0])
    # the same feature split twice along a path (second split inert on the z_0 = 0 side)
    inner = {
        "split_feature": 0,
        "threshold": 0.5,
        "decision_type": "<=",
        "default_left": True,
        "missing_type": "None",
        "left_child": _leaf(2.0),
        "right_child": _leaf(7.0),
    }
    tree = {
        "split_feature": 0,
        "threshold": 0.5,
        "decision_type": "<=",
        "default_left": True,
        "missing_type": "None",
        "left_child": inner,
        "right_child": {
            "split_feature": 1,
            "threshold": 1e-35,
            "decision_type": "<=",
            "default_left": True,
            "missing_type": "None",
            "left_child": _leaf(-1.0),
            "right_child": _leaf(4.0),
        },
    }
    coeffs = lightgbm_to_fourier(_FakeBooster(tree), 2)
    z = _all_masks(2)
    np.testing.assert_allclose(predict(coeffs, z), [2.0, 2.0, -1.0, 4.0], atol=1e-12)
    # categorical split: categories listed in threshold go left
    tree = {
        "split_feature": 1,
        "threshold": "1",
        "decision_type": "==",
        "default_left": False,
        "missing_type": "None",
        "left_child": _leaf(3.0),
        "right_child": _leaf(-3.0),
    }
    coeffs = lightgbm_to_fourier(_FakeBooster(tree), 2)
    np.testing.assert_allclose(predict(coeffs, z), [-3.0, 3.0, -3.0, 3.0], atol=1e-12)
    with pytest.raises(InputError, match="outside"):
        lightgbm_to_fourier(_FakeBooster(tree), 1)
    with pytest.raises(InputError):
        lightgbm_to_fourier(object(), 2)


def test_truncation_keeps_coefficients_strictly_above_the_threshold() -> None:
    coeffs = {(): 5.0, (0,): 3.0, (1,): -2.0, (2,): 1.0, (3,): 0.5}
    # energy shares: 9, 13, 14, 14.25 of 14.25 -> 0.632, 0.912, 0.982: threshold coefficient (2,)
    assert truncate_energy(coeffs, 0.95) == {(): 5.0, (0,): 3.0, (1,): -2.0}
    assert truncate_energy(coeffs, 0.95, inclusive=True) == {
        (): 5.0,
        (0,): 3.0,
        (1,): -2.0,
        (2,): 1.0,
    }
    assert truncate_energy(coeffs, 0.5) == {(): 5.0}
    assert truncate_energy({(): 1.0}) == {(): 1.0}
    with pytest.raises(ParameterError):
        truncate_energy(coeffs, 1.5)


def test_ridge_refit_recovers_true_coefficients_on_the_support() -> None:
    rng = np.random.default_rng(1)
    truth = {(): 0.7, (0,): -1.0, (1, 2): 0.5, (0, 3, 4): 1.5}
    z = rng.integers(0, 2, size=(400, 6)).astype(bool)
    got = ridge_refit(list(truth), z, predict(truth, z))
    np.testing.assert_allclose([got[k] for k in truth], list(truth.values()), atol=1e-3)


def test_proxyspex_recovers_planted_low_order_game() -> None:
    n = 16
    rng = np.random.default_rng(2)
    masks = rng.integers(0, 2, size=(1500, n)).astype(bool)
    values = _hierarchical_game(masks) + 0.05 * rng.normal(size=1500)
    grid = {"max_depth": [3, 5], "n_estimators": [300], "learning_rate": [0.1]}
    coeffs, info = proxyspex_fit(masks, values, max_order=5, grid=grid, return_info=True)
    test = rng.integers(0, 2, size=(1000, n)).astype(bool)
    assert fourier_r2(coeffs, test, _hierarchical_game(test)) > 0.9
    assert info["best_params"]["max_depth"] in (3, 5)
    assert info["n_kept"] == len(coeffs) and info["n_kept"] < info["n_tree_coeffs"]
    assert () in coeffs
    # the planted pairwise interactions are found
    for pair in [(0, 1), (2, 3)]:
        assert pair in coeffs
    # deterministic for a fixed seed
    again = proxyspex_fit(masks, values, max_order=5, grid=grid)
    assert again == coeffs


def test_proxyspex_rejects_bad_inputs() -> None:
    z = np.zeros((50, 4), dtype=bool)
    with pytest.raises(ParameterError, match="grid"):
        proxyspex_fit(z, np.zeros(50), grid="huge")
    with pytest.raises(InputError, match="rows"):
        proxyspex_fit(z, np.zeros(49))
    with pytest.raises(InputError, match="at least 10"):
        proxyspex_fit(z[:5], np.zeros(5))


def test_default_grid_and_folds_equal_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default grid is spectralexplain's proxy_spex grid (max_depth {t-2, t}, 500/1000/
    5000 trees, learning rate 0.01/0.1, 5 folds scored by R^2), and the folds are shuffled
    with the seed: masks arrive in binary order when every coalition is evaluated."""
    from sklearn import model_selection

    seen: dict = {}

    class Spy(model_selection.GridSearchCV):
        def __init__(self, estimator, *, param_grid, scoring=None, cv=None, n_jobs=None):
            seen.update(param_grid=param_grid, scoring=scoring, cv=cv)
            super().__init__(estimator, param_grid=param_grid, scoring=scoring, cv=cv,
                             n_jobs=n_jobs)

        def fit(self, x, y):  # record only: the 5000-tree grid is slow
            raise RuntimeError("stop")

    monkeypatch.setattr(model_selection, "GridSearchCV", Spy)
    z = ((np.arange(64)[:, None] >> np.arange(6)) & 1).astype(bool)  # binary order
    with pytest.raises(RuntimeError, match="stop"):
        proxyspex_fit(z, z.sum(1).astype(float), max_order=5, seed=7)
    assert seen["param_grid"] == {"max_depth": [3, 5], "n_estimators": [500, 1000, 5000],
                                  "learning_rate": [0.01, 0.1]}
    assert seen["scoring"] == "r2"
    cv = seen["cv"]
    assert cv.n_splits == 5 and cv.shuffle is True and cv.random_state == 7
    # shuffled: each test fold mixes both halves of the binary order (feature 5 = 0 and 1)
    for _, test in cv.split(z):
        assert 0 < z[test, 5].mean() < 1


def test_ridge_refit_is_unmoved_by_a_constant_added_to_the_game() -> None:
    """The constant was one more penalised column: an offset of 1e8 moved the Banzhaf values
    by 0.04 and 1e10 by 4.0 (of values about 1); it is now the unpenalised intercept."""
    from attrlens.solvers.indices import banzhaf_values

    rng = np.random.default_rng(0)
    w = rng.normal(size=12)
    z = rng.random((400, 12)) < 0.5
    keys = [()] + [(i,) for i in range(12)]
    for off in (0.0, 1e4, 1e8, 1e10):
        got = ridge_refit(keys, z, off + z @ w)
        assert np.abs(banzhaf_values(got, 12) - w).max() < 1e-6, off
        assert got[()] == pytest.approx(off + w.sum() / 2, rel=1e-9, abs=1e-6)
    # without the constant among the keys there is no intercept
    assert set(ridge_refit([(0,), (1,)], z, z @ w)) == {(0,), (1,)}


def test_proxyspex_keeps_the_coefficient_that_reaches_the_energy_share() -> None:
    """Twelve equal effects: the twelfth tree coefficient reaches 95% of the energy, and the
    spectralexplain rule (only those above it) scored that feature 0 with a proxy of CV R²
    0.99; the default keeps it (energy_cut="covering"), "strict" is the reference's rule."""
    import attrlens

    def fn(m):
        return m.sum(1) * 1.0

    cover = attrlens.explain_game(fn, 12, method="proxyspex", grid="small", budget=600)
    np.testing.assert_allclose(cover.scores, 1.0, atol=1e-6)
    assert cover.params["energy_cut"] == "covering"
    strict = attrlens.explain_game(fn, 12, method="proxyspex", grid="small", budget=600,
                                   energy_cut="strict")
    assert (strict.scores == 0).sum() >= 1
