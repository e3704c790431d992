"""MoRF / LeRF / ABPC on games with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from attrlens.errors import InputError, ParameterError
from attrlens.evaluation.curves import (
    auc,
    curve_masks,
    embedding_discrepancy,
    fixed_output_curves,
    mask_rates,
    n_masked,
    regenerate_curves,
)


def test_rates_and_counts_are_exact():
    assert np.allclose(mask_rates(), np.linspace(0, 1, 11))
    assert n_masked(10).tolist() == list(range(11))
    assert n_masked(3).tolist() == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 3]
    assert n_masked(30).tolist() == [3 * i for i in range(11)]  # no 0.3*10 = 2.99 pitfalls


def test_masks_follow_the_ranking():
    scores = np.array([0.1, 5.0, -2.0, 3.0, 0.0])
    m = curve_masks(scores, "morf")
    assert m.shape == (11, 5) and m[0].all() and not m[-1].any()
    # 2 features masked at rho = .4 (floor(.4*5)): the two highest scores (1 and 3)
    assert np.flatnonzero(~m[4]).tolist() == [1, 3]
    lerf = curve_masks(scores, "lerf")
    assert np.flatnonzero(~lerf[4]).tolist() == [2, 4]
    # masks are nested: once masked, a feature stays masked
    assert np.all(m[1:] <= m[:-1])
    with pytest.raises(ParameterError):
        curve_masks(scores, "sideways")
    with pytest.raises(InputError):
        curve_masks([1.0, np.nan], "morf")


def test_additive_game_gives_the_sorted_cumulative_weights():
    w = np.array([4.0, -1.0, 3.0, 0.5, 2.0, 1.0, -2.0, 0.0, 1.5, 2.5])

    def value(masks):  # mean log-prob that rises with the kept features' weights
        return -10.0 + masks.astype(float) @ w

    cur = fixed_output_curves(w, value)
    desc, asc = np.sort(w)[::-1], np.sort(w)
    assert np.allclose(cur.morf_curve, np.concatenate([[0], np.cumsum(desc)]), atol=1e-12)
    assert np.allclose(cur.lerf_curve, np.concatenate([[0], np.cumsum(asc)]), atol=1e-12)
    assert cur.morf == pytest.approx(np.mean(cur.morf_curve))
    assert cur.abpc == pytest.approx(cur.morf - cur.lerf)
    assert cur.abpc > 0
    # the true ranking beats a reversed one and a random one on this game
    rev = fixed_output_curves(-w, value)
    assert rev.abpc == pytest.approx(-cur.abpc)
    rnd = fixed_output_curves(np.random.default_rng(0).permutation(w), value)
    assert rnd.abpc < cur.abpc
    # both curves end at the fully masked prompt
    assert cur.morf_curve[-1] == pytest.approx(cur.lerf_curve[-1])


def test_auc_kinds():
    d = np.arange(11.0)
    assert auc(d) == pytest.approx(5.0)
    assert auc(d, kind="trapezoid") == pytest.approx(5.0)  # linear: both equal the mean
    d2 = np.zeros(11)
    d2[-1] = 10.0
    assert auc(d2) == pytest.approx(10 / 11)
    assert auc(d2, kind="trapezoid") == pytest.approx(0.5)
    with pytest.raises(InputError):
        auc(np.zeros(5))


def test_regenerate_curves_with_a_known_generator():
    scores = np.array([3.0, 2.0, 1.0, 0.0])
    vec = {"paris": np.array([1.0, 0.0]), "lyon": np.array([0.0, 1.0]),
           "hmm": np.array([1.0, 1.0])}

    def generate(masks):  # the answer depends on feature 0 only; all masked -> "hmm"
        return ["hmm" if not m.any() else ("paris" if m[0] else "lyon") for m in masks]

    cur = regenerate_curves(scores, generate, lambda texts: np.stack([vec[t] for t in texts]))
    # MoRF removes feature 0 first (rho >= .3 masks floor(.3*4) = 1 feature): answer flips
    expected_m = [0, 0, 0, 100, 100, 100, 100, 100, 100, 100, 100 * (1 - 1 / np.sqrt(2))]
    assert np.allclose(cur.morf_curve, expected_m)
    # LeRF removes feature 0 last: the answer stays until everything is masked
    assert np.allclose(cur.lerf_curve[:-1], 0)
    assert cur.abpc > 0 and cur.variant == "regenerate"


def test_embedding_discrepancy_range():
    ref = np.array([1.0, 0.0])
    d = embedding_discrepancy(ref, np.array([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]))
    assert np.allclose(d, [0.0, 100.0, 200.0])
