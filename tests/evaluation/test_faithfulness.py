"""Faithfulness R², calibrated R², top-k removal, and the closed-model value function."""

from __future__ import annotations

import numpy as np
import pytest

import attrlens
from attrlens.errors import CapabilityError, InputError, ParameterError
from attrlens.evaluation.closed_values import (
    ClosedValueFunction,
    answer_logprob_diff,
    closed_game,
)
from attrlens.evaluation.faithfulness import (
    faithfulness_r2,
    predict_surrogate,
    removal_sets,
    topk_removal,
    uniform_test_masks,
)
from attrlens.games import Game
from attrlens.result import Attribution

N = 8
W = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -0.75, 0.25, 1.5])


def additive(masks):
    return masks.astype(float) @ W + 0.3


def attribution(scores, **metadata):
    return Attribution(method="test", scores=np.asarray(scores, float),
                       labels=[f"x{i}" for i in range(len(scores))],
                       extra={"metadata": metadata} if metadata else {})


def test_r2_equals_one_for_an_exact_surrogate_and_counts_the_test_set_once():
    g = Game(additive, N)
    a = attrlens.explain_game(g, N, method="banzhaf", budget=64, seed=0)
    before = g.n_calls
    f = faithfulness_r2(a, g, n_test=1000, seed=0)
    assert f.kind == "surrogate" and f.n_test == 1000
    assert f.r2 == pytest.approx(1.0, abs=1e-8)
    # 1000 uniform masks over 8 features hit at most 256 distinct coalitions (memo)
    assert g.n_calls - before <= 256
    calls = g.n_calls
    faithfulness_r2(a, g, n_test=1000, seed=0)
    assert g.n_calls == calls  # the same test set is not evaluated again


def test_r2_matches_a_manual_computation():
    rng = np.random.default_rng(0)
    fn = lambda m: additive(m) + 2.0 * m[:, 0] * m[:, 1]
    scores = W + rng.normal(scale=0.3, size=N)
    a = attribution(scores, intercept=0.5)  # a linear surrogate β0 + βᵀz (LIME-style)
    masks = uniform_test_masks(N, 1000, seed=7)
    y = fn(masks)
    yhat = 0.5 + masks.astype(float) @ scores
    manual = 1 - np.sum((y - yhat) ** 2) / np.sum((y - y.mean()) ** 2)
    f = faithfulness_r2(a, fn, test_masks=masks)
    assert f.r2 == pytest.approx(manual, abs=1e-12)
    assert f.r2 < 0.99
    from sklearn.metrics import r2_score

    assert r2_score(y, yhat) == pytest.approx(manual, abs=1e-12)


def test_fourier_and_mobius_surrogates_predict_their_dictionaries():
    masks = uniform_test_masks(4, 50, seed=1)
    z = masks.astype(float)
    four = {"basis": "fourier", "terms": [{"features": [], "value": 1.0},
                                          {"features": [0, 2], "value": 0.5}]}
    mob = {"basis": "mobius", "terms": [{"features": [], "value": 1.0},
                                        {"features": [1, 3], "value": -2.0}]}
    yf = predict_surrogate(attribution(np.zeros(4), surrogate=four), masks)
    ym = predict_surrogate(attribution(np.zeros(4), surrogate=mob), masks)
    np.testing.assert_allclose(yf, 1.0 + 0.5 * (-1.0) ** (z[:, 0] + z[:, 2]), atol=1e-12)
    np.testing.assert_allclose(ym, 1.0 - 2.0 * z[:, 1] * z[:, 3], atol=1e-12)
    assert predict_surrogate(attribution(np.zeros(4)), masks) is None


def test_kernel_shap_surrogate_is_first_order_mobius_plus_v0():
    g = Game(additive, N)
    a = attrlens.explain_game(g, N, method="kernel_shap", budget=100, seed=0)
    masks = uniform_test_masks(N, 30, seed=2)
    np.testing.assert_allclose(predict_surrogate(a, masks), 0.3 + masks @ a.scores, atol=1e-9)


def test_calibrated_r2_for_methods_without_a_surrogate():
    g = Game(additive, N)
    a = attrlens.explain_game(g, N, method="loo")  # LOO has no surrogate
    f = faithfulness_r2(a, g, n_test=500, seed=0)
    assert f.kind == "calibrated"
    # additive game: v(z) = v(1) - Σ w_i (1 - z_i), so α = v(1), γ = -1 and R² = 1
    assert f.r2 == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(f.calibration, (W.sum() + 0.3, -1.0), atol=1e-9)
    with pytest.raises(ParameterError):
        faithfulness_r2(a, g, mode="surrogate")


def test_topk_removal_marginal_and_greedy_surrogate():
    g = Game(additive, N)
    a = attribution(W)
    delta = topk_removal(a, g, r_max=3, direction="decrease")
    full = W.sum() + 0.3
    order = np.argsort(-W)
    expected = [abs(W[order[:r]].sum()) / abs(full) for r in (1, 2, 3)]
    np.testing.assert_allclose(delta, expected, atol=1e-12)
    inc = removal_sets(a, 2, direction="increase")
    assert list(inc[1]) == [1, 5]  # the two most negative features
    # a surrogate with a strong pair: greedy search removes the pair's members first
    sur = {"basis": "mobius", "terms": [{"features": [], "value": 0.0},
                                        {"features": [2, 6], "value": 10.0}]}
    b = attribution(np.zeros(N), surrogate=sur)
    sets = removal_sets(b, 2, direction="decrease")
    assert set(sets[1].tolist()) & {2, 6}
    with pytest.raises(InputError, match="is 0"):
        topk_removal(attribution(W), lambda m: m.astype(float) @ W * 0.0, r_max=2)


# ---- closed-model value function ---------------------------------------------------------
def test_answer_logprob_diff_floor_and_both_missing():
    top = {"True": -0.2, " False": -1.7, "Maybe": -3.0}
    assert answer_logprob_diff(top) == pytest.approx(1.5)
    assert answer_logprob_diff({"True": -0.5}) == pytest.approx(-0.5 + 100.0)
    assert answer_logprob_diff({"False": -0.5}, floor=-50.0) == pytest.approx(-50.0 + 0.5)
    assert answer_logprob_diff({"Maybe": -0.1}) == 0.0
    # " True" and "True" are one answer: probabilities add
    merged = answer_logprob_diff({"True": np.log(0.3), " True": np.log(0.2), "False": np.log(0.5)})
    assert merged == pytest.approx(np.log(0.5) - np.log(0.5), abs=1e-12)


def test_closed_game_on_fake_server(fake_openai):
    from attrlens.models.openai import OpenAIBackend

    backend = OpenAIBackend(fake_openai.base_url, "fake-model", cache=False)
    msgs = [{"role": "system", "content": "Answer."}, {"role": "user", "content": "is it raining today"}]
    # the fake server's first token is "echo:" (log-prob -0.1), then "alt0" (-1.0), "alt1", ...
    g = closed_game(backend, msgs, answers=("echo:", "alt0"), top_logprobs=5)
    assert g.n_features == 4 and g.labels == ["is", "it", "raining", "today"]
    masks = np.array([[1, 1, 1, 1], [0, 1, 0, 1]], dtype=bool)
    np.testing.assert_allclose(g(masks), [0.9, 0.9], atol=1e-9)
    assert g.n_calls == 2
    assert g.value_fn.render(masks[1])[1]["content"] == "<unk> it <unk> today"
    assert g.value_fn.render(masks[1])[0]["content"] == "Answer."  # system prompt frozen
    floor = closed_game(backend, msgs, answers=("alt0", "never"), top_logprobs=3, floor=-100.0,
                        masker="delete")
    np.testing.assert_allclose(floor(masks[:1]), [-1.0 + 100.0], atol=1e-9)
    assert floor.value_fn.render(masks[1])[1]["content"] == " it today"
    none = closed_game(backend, msgs, answers=("yes", "no"), top_logprobs=3)
    np.testing.assert_allclose(none(masks), [0.0, 0.0], atol=0)
    # SPEX explains it through explain_game with the game's labels (min budget at b = 3)
    res = attrlens.explain_game(g, g.n_features, method="spex", budget=600, labels=g.labels,
                                index="fourier")
    assert res.cost["value_calls"] <= 600 and res.labels == g.labels
    np.testing.assert_allclose(res.scores, 0.0, atol=1e-9)  # the fake answers ignore the prompt


def test_closed_value_function_rejects_bad_parameters():
    class Dummy:
        def chat_many(self, msgs, **kw):
            raise AssertionError("not called")

    with pytest.raises(ParameterError, match="'answers'"):
        ClosedValueFunction(Dummy(), "a b", answers=("True",))
    with pytest.raises(ParameterError, match="'masker'"):
        ClosedValueFunction(Dummy(), "a b", masker="blank")
    with pytest.raises(InputError, match="explainable role"):
        ClosedValueFunction(Dummy(), [{"role": "system", "content": "x y"}])
    with pytest.raises(CapabilityError):
        fn = ClosedValueFunction(_NoLogprobs(), "a b")
        fn(np.ones((1, 2), bool))


class _NoLogprobs:
    def require_logprobs(self):
        raise CapabilityError("no log-probs")

    def chat_many(self, msgs, **kw):
        raise AssertionError("must check log-prob support first")


@pytest.mark.parametrize("method,budget", [("banzhaf", 100), ("faith_banzhaf", 100),
                                           ("proxyspex", 200)])
def test_r2_test_and_calibration_masks_are_held_out_from_the_methods_draws(method, budget):
    # with n = 12 (4096 coalitions), a uniform test mask is one of the method's `budget`
    # distinct training masks with probability budget / 4096 (2.4% / 4.9%); drawn from the
    # method's own stream (the same seed), the first `budget` test masks were all of them
    n = 12
    rng = np.random.default_rng(7)
    w = rng.normal(size=n)
    seen = []

    def game(m):
        seen.append(np.asarray(m, bool).copy())
        return np.asarray(m, float) @ w

    for seed in (0, 3):
        seen.clear()
        attrlens.explain_game(game, n, method=method, budget=budget, seed=seed)
        train = {r.tobytes() for s in seen for r in s}
        assert len(train) >= budget // 2
        chance = len(train) / 2**n
        for masks in (uniform_test_masks(n, 1000, seed=seed), calibration(n, 1000, seed)):
            for part in (masks[:budget], masks):
                share = np.mean([r.tobytes() in train for r in part])
                # binomial: mean `chance`, sd <= 0.022 for the first 100; 4 sd above chance
                assert share <= chance + 4 * np.sqrt(chance * (1 - chance) / len(part)), share
    # the test and calibration sets are different draws
    assert not np.array_equal(uniform_test_masks(n, 200, seed=0), calibration(n, 200, 0))


def calibration(n, m, seed):
    from attrlens.evaluation.faithfulness import calibration_masks

    return calibration_masks(n, m, seed=seed)


@pytest.mark.parametrize("method", ["kernel_shap", "lime", "loo", "banzhaf"])
def test_r2_of_a_constant_game_is_undefined(method):
    # var(v) = 0: R² is 0/0 (scikit-learn's force_finite gave kernel_shap and lime 1.0 and the
    # calibrated loo 0.0); it is NaN, as LDS is
    g = Game(lambda m: np.full(len(m), 2.5), N)
    a = attrlens.explain_game(g, N, method=method, seed=0, **({} if method == "loo" else
                                                               {"budget": 64}))
    f = faithfulness_r2(a, g, n_test=200, seed=0)
    assert np.isnan(f.r2), (method, f)
    # a game that varies keeps its finite R²
    assert np.isfinite(faithfulness_r2(a, Game(additive, N), n_test=200, seed=0).r2)
