"""LDS (ContextCite's linear datamodeling score) on synthetic games with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from attrlens.errors import InputError
from attrlens.evaluation.lds import lds_masks, linear_datamodeling_score, spearman
from attrlens.games import Game

W = np.array([3.0, -1.0, 0.5, 2.0, -2.5, 1.5, 0.25, -0.75])


def additive(masks: np.ndarray) -> np.ndarray:
    return 0.7 + masks.astype(float) @ W


def test_additive_game_true_scores_give_one_and_reversed_minus_one():
    game = Game(additive, len(W))
    assert linear_datamodeling_score(W, game, n_test=200).value == pytest.approx(1.0, abs=1e-12)
    assert linear_datamodeling_score(-W, game, n_test=200).value == pytest.approx(-1.0, abs=1e-12)
    # scale and a shift of the game do not matter (ranks only)
    assert linear_datamodeling_score(5 * W, lambda m: 10 + 3 * additive(m),
                                     n_test=200).value == pytest.approx(1.0, abs=1e-12)


def test_random_scores_are_far_from_one_and_interactions_lower_it():
    game = Game(additive, len(W))
    rng = np.random.default_rng(1)
    vals = [linear_datamodeling_score(rng.normal(size=len(W)), game, n_test=200).value
            for _ in range(20)]
    assert np.mean(np.abs(vals)) < 0.8
    # a game with a strong pairwise term: the additive scores no longer rank perfectly
    inter = Game(lambda m: additive(m) + 8.0 * (m[:, 0] & m[:, 4]), len(W))
    v = linear_datamodeling_score(W, inter, n_test=200).value
    assert 0.0 < v < 0.99


def test_masks_are_seeded_held_out_and_keep_half():
    a = lds_masks(50, 400, seed=3)
    assert a.shape == (400, 50) and a.dtype == bool
    assert np.array_equal(a, lds_masks(50, 400, seed=3))
    assert not np.array_equal(a, lds_masks(50, 400, seed=4))
    assert abs(a.mean() - 0.5) < 0.02
    # not the R² test masks of the same seed
    from attrlens.evaluation.faithfulness import uniform_test_masks

    assert not np.array_equal(a, uniform_test_masks(50, 400, seed=3))
    assert abs(lds_masks(50, 400, p_keep=0.2, seed=0).mean() - 0.2) < 0.02


def test_spearman_matches_scipy_and_constant_is_nan():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=30), rng.integers(0, 4, size=30).astype(float)  # ties in y
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert np.isnan(spearman(x, np.ones(30)))
    with pytest.raises(InputError, match="length"):
        spearman(x, y[:5])


def test_bad_input_is_refused():
    game = Game(additive, len(W))
    with pytest.raises(InputError, match="features"):
        linear_datamodeling_score(W[:3], game)
    with pytest.raises(InputError, match="NaN"):
        linear_datamodeling_score(np.r_[W[:-1], np.nan], game)
