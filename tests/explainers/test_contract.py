"""The shared contract every game-based explainer passes, plus known-answer games."""

from __future__ import annotations

import numpy as np
import pytest

import attrlens
from attrlens.errors import ParameterError
from attrlens.explainers.base import get_explainer, list_methods
from attrlens.games import Game
from attrlens.result import Attribution

N = 6
W = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -0.75])


def additive(masks):
    return masks.astype(float) @ W + 0.3


def game_methods():
    return [m for m in list_methods() if not get_explainer(m).needs_model
            and not get_explainer(m).needs_closed_model]


@pytest.mark.parametrize("method", game_methods())
def test_contract(method, tmp_path):
    cls = get_explainer(method)
    cls()  # constructs with defaults
    budget = max(cls().min_budget(N), 64)
    g = Game(additive, N)
    a = attrlens.explain_game(g, N, method=method, budget=budget, seed=3)
    assert g.n_calls <= budget  # respects its budget
    assert a.scores.shape == (N,) and np.all(np.isfinite(a.scores))
    b = attrlens.explain_game(additive, N, method=method, budget=budget, seed=3)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-12)  # deterministic for a seed
    back = Attribution.load(a.save(tmp_path / "r.json"))
    np.testing.assert_allclose(back.scores, a.scores, atol=1e-12)
    assert back.method == method and back.seed == 3
    # an additive game's attributions point the right way
    assert np.corrcoef(a.scores, W)[0, 1] > 0.9
    with pytest.raises(ParameterError):
        attrlens.explain_game(additive, N, method=method, budget=0)


def test_loo_is_exact_on_additive_game():
    a = attrlens.explain_game(additive, N, method="loo")
    np.testing.assert_allclose(a.scores, W, atol=1e-12)
    assert a.cost["value_calls"] == N + 1


def test_loo_budget_too_small_names_the_minimum():
    with pytest.raises(ParameterError, match="at least 7"):
        attrlens.explain_game(additive, N, method="loo", budget=3)


def test_lime_recovers_linear_weights():
    a = attrlens.explain_game(additive, N, method="lime", budget=64, alpha=1e-6)
    np.testing.assert_allclose(a.scores, W, atol=1e-6)
    assert a.extra["metadata"]["fit_r2_weighted"] == pytest.approx(1.0, abs=1e-9)


def test_unknown_method_lists_names_and_suggests():
    with pytest.raises(ParameterError, match="Did you mean 'lime'"):
        attrlens.explain_game(additive, N, method="lim")
