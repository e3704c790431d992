"""LIME-text (the reference's sampling, kernel, ridge and budget default) and its
'distinct' variant, against brute-force weighted ridge on the same samples."""

from __future__ import annotations

import numpy as np
import pytest

import attrlens
from attrlens.errors import ParameterError
from attrlens.games import Game
from attrlens.solvers.sampling import lime_masks

N = 6
W = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -0.75])


def additive(masks):
    z = masks.astype(float)
    return z @ np.resize(W, z.shape[1]) + 0.3


def brute_force_lime(masks, y, *, width=25.0, alpha=1.0):
    """Reference LIME-text on given samples, written out: cosine distance x100 to the
    original, kernel sqrt(exp(-d^2/width^2)), ridge with an unpenalised intercept by the
    weighted normal equations."""
    z = masks.astype(float)
    n = z.shape[1]
    cos = (z @ np.ones(n)) / (np.linalg.norm(z, axis=1) * np.sqrt(n) + 1e-300)
    d = (1.0 - cos) * 100.0
    w = np.sqrt(np.exp(-(d**2) / width**2))
    X = np.hstack([np.ones((len(z), 1)), z])
    pen = alpha * np.eye(n + 1)
    pen[0, 0] = 0.0
    beta = np.linalg.solve(X.T @ (w[:, None] * X) + pen, X.T @ (w * y))
    return beta[1:], beta[0]


def test_additive_game_recovers_the_weights():
    a = attrlens.explain_game(additive, N, method="lime", alpha=1e-9)
    np.testing.assert_allclose(a.scores, W, atol=1e-6)
    assert a.extra["metadata"]["fit_r2_weighted"] == pytest.approx(1.0, abs=1e-9)


def test_equals_brute_force_reference_on_the_same_samples():
    rng = np.random.default_rng(0)
    table = {}

    def game(masks):  # a non-additive game: interactions make the ridge answer non-trivial
        out = []
        for r in masks:
            k = r.tobytes()
            if k not in table:
                table[k] = float(r @ W + 2.0 * r[0] * r[1] - r[2] * r[4] + rng.normal())
            out.append(table[k])
        return np.asarray(out)

    a = attrlens.explain_game(game, N, method="lime", seed=5)
    # default budget = min(num_samples, 2^n): every one of the 5000 samples is used
    assert a.params["budget"] == 64 and a.extra["metadata"]["n_samples"] == 5000
    assert a.params["variant"] == "lime_text" and a.params["num_samples"] == 5000
    assert a.params["kernel_width"] == 25.0 and a.params["alpha"] == 1.0
    masks = lime_masks(N, 5000, seed=5)
    y = np.array([table[r.tobytes()] for r in masks])
    coef, intercept = brute_force_lime(masks, y)
    np.testing.assert_allclose(a.scores, coef, atol=1e-8)
    assert a.extra["metadata"]["intercept"] == pytest.approx(intercept, abs=1e-8)
    # repeats are memo hits: 5000 samples, at most 2^6 evaluations
    assert a.cost["value_calls"] == a.extra["metadata"]["n_distinct"] <= 64


def test_budget_bounds_distinct_evaluations():
    g = Game(additive, 10)
    a = attrlens.explain_game(g, 10, method="lime", budget=30, seed=1)
    meta = a.extra["metadata"]
    assert g.n_calls == 30 == a.cost["value_calls"] == meta["n_distinct"]
    # the samples are the longest leading part of the reference draw within the budget
    masks = lime_masks(10, 5000, seed=1)
    seen = []
    for r in masks:
        if r.tobytes() not in seen:
            seen.append(r.tobytes())
    first_31st = next(i for i, r in enumerate(masks) if r.tobytes() == seen[30])
    assert meta["n_samples"] == first_31st
    # num_samples smaller than the budget: the budget is not the binding limit
    b = attrlens.explain_game(additive, 10, method="lime", budget=500, num_samples=40)
    assert b.extra["metadata"]["n_samples"] == 40 and b.cost["value_calls"] <= 40


def test_distinct_variant_is_the_old_estimator():
    g = Game(additive, N)
    a = attrlens.explain_game(g, N, method="lime", variant="distinct", budget=40, seed=2)
    assert a.params["variant"] == "distinct"
    meta = a.extra["metadata"]
    assert meta["n_samples"] == meta["n_distinct"] == 40 == g.n_calls
    masks = lime_masks(N, 40, seed=2, variant="distinct")
    coef, _ = brute_force_lime(masks, additive(masks))
    np.testing.assert_allclose(a.scores, coef, atol=1e-8)
    # default budget of the variant: min(512, max(64, 2n)), capped by the masks that exist
    b = attrlens.explain_game(additive, N, method="lime", variant="distinct")
    assert b.params["budget"] == 64 and b.cost["value_calls"] == 2**N - 1


def test_seed_and_parameters():
    a = attrlens.explain_game(additive, 12, method="lime", budget=50, seed=3)
    b = attrlens.explain_game(additive, 12, method="lime", budget=50, seed=3)
    c = attrlens.explain_game(additive, 12, method="lime", budget=50, seed=4)
    np.testing.assert_allclose(a.scores, b.scores, atol=0)
    assert np.abs(a.scores - c.scores).max() > 1e-6
    m = attrlens.explain_game(additive, N, method="lime", kernel_width="median")
    assert m.params["kernel_width"] == "median" and m.params["kernel_width_effective"] > 0
    for bad in ({"variant": "exact"}, {"num_samples": 1}, {"kernel_width": 0.0},
                {"alpha": -1.0}, {"budget": 1}):
        with pytest.raises(ParameterError, match=next(iter(bad))):
            attrlens.explain_game(additive, N, method="lime", **bad)


def test_a_kernel_that_leaves_one_sample_is_said():
    """Width 0.25 on LIME's 100 x cosine distances weighs every perturbed row ~0: the ridge
    fitted the original row alone, scored every feature 0 and reported a weighted R² of 1."""
    import warnings

    fn = lambda m: m.astype(float) @ np.arange(1.0, 6.0)
    with pytest.warns(UserWarning, match=r"leaves 1\.00 effective samples of \d+.*widen"):
        narrow = attrlens.explain_game(fn, 5, method="lime", kernel_width=0.25)
    assert np.allclose(narrow.scores, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wide = attrlens.explain_game(fn, 5, method="lime")
    np.testing.assert_allclose(wide.scores, np.arange(1.0, 6.0), atol=0.05)


def test_a_sample_count_beyond_memory_is_refused_before_drawing():
    """num_samples=10**12 drew samples for minutes without a word (every sample is drawn,
    kept and weighted, repeats included); it is refused at once, naming --num-samples."""
    with pytest.raises(ParameterError, match=r"Lower --num-samples to at most \d+"):
        attrlens.explain_game(lambda m: m.sum(1) * 1.0, 8, method="lime", num_samples=10**12)
