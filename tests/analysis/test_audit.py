"""The surrogate audit: K exact evaluations (the unmasked prompt + leave-one-out on the top
and bottom features), rank and sign agreement with the surrogate's scores, calls counted."""

from __future__ import annotations

import numpy as np
import pytest

from attrlens.analysis.audit import audit, audit_features
from attrlens.errors import ParameterError
from attrlens.games import Game

WEIGHTS = np.array([3.0, -1.0, 0.5, 2.0, -2.5, 0.1])


def additive_game() -> Game:
    """v(z) = w . z: the leave-one-out effect of feature i is exactly w_i."""
    return Game(lambda m: m.astype(float) @ WEIGHTS, len(WEIGHTS))


def test_features_are_top_then_bottom():
    assert audit_features(WEIGHTS, 4) == [0, 3, 4, 1]
    assert audit_features(WEIGHTS, 3) == [0, 3, 4]


def test_agreeing_surrogate_scores_one_and_costs_k():
    game = additive_game()
    res = audit(WEIGHTS * 0.5 + 0.01, game, 5)
    assert res.k == 5 and res.features == [0, 3, 4, 1]
    np.testing.assert_allclose(res.served, WEIGHTS[res.features])
    assert res.spearman == pytest.approx(1.0)
    assert res.sign_agreement == 1.0
    assert res.cost["value_calls"] == 5 and game.n_calls == 5


def test_reversed_surrogate_scores_minus_one():
    res = audit(-WEIGHTS, additive_game(), 5, labels=list("abcdef"))
    assert res.spearman == pytest.approx(-1.0)
    assert res.sign_agreement == 0.0
    assert res.labels == ["e", "b", "a", "d"]


def test_two_features_give_no_rank_correlation():
    """K = 3 audits two features, whose ranks always agree or disagree wholly: a Spearman of
    +-1.00 was reported as if it measured something."""
    res = audit(-WEIGHTS, additive_game(), 3)
    assert len(res.features) == 2 and res.spearman is None
    assert res.sign_agreement == 0.0  # (the signs still say something)
    assert audit(-WEIGHTS, additive_game(), 4).spearman == pytest.approx(-1.0)


def test_k_is_clipped_and_checked():
    res = audit(WEIGHTS, additive_game(), 100)
    assert res.k == len(WEIGHTS) + 1 and len(res.features) == len(WEIGHTS)
    with pytest.raises(ParameterError, match="K >= 3"):
        audit(WEIGHTS, additive_game(), 2)


@pytest.mark.integration
def test_audit_end_to_end_on_llama_cpp(llama_server, default_model):
    """RoPE-LIME's surrogate attribution audited against the served model (forced tokens)."""
    from attrlens import api
    from attrlens.models.openai import OpenAIBackend

    be = OpenAIBackend(llama_server.base_url, llama_server.model_name, cache=False)
    attr = api.explain("What is the capital of France? Answer in one word.",
                       model=default_model, method="rope_lime", output="Paris",
                       budget=12, target_backend=be, audit=4)
    a = attr.extra["audit"]
    assert attr.params["route"] == "surrogate"
    assert a["route"] == "forced_tokens" and a["k"] == 4
    assert a["cost"]["value_calls"] == 4 and a["cost"]["api_calls"] >= 4
    assert a["spearman"] is None or -1.0 <= a["spearman"] <= 1.0
    assert 0.0 <= a["sign_agreement"] <= 1.0
    assert attr.cost["api_calls"] >= a["cost"]["api_calls"]
