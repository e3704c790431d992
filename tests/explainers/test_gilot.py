"""GiLOT: beam marginals, masking, own vs shared beams, distances, the beam game, the
explainer on the contract, and the analysis use cases on its attributions."""

from __future__ import annotations

import functools
import re

import numpy as np
import pytest
import torch

import attrlens
from attrlens.analysis import (
    Comparison,
    align_slots,
    features_in_span,
    marked_spans,
    query_weight,
    run_compare,
    run_query_weight,
)
from attrlens.errors import InputError, ParameterError
from attrlens.games import BudgetedGame, BudgetExceededError
from attrlens.games.beams import BeamGame, BeamSettings
from attrlens.result import Attribution
from attrlens.scoring.beams import BeamRunner, make_inputs, unmasked_inputs
from attrlens.scoring.distributions import kl_full, topk_union

PROMPT = "The quick brown fox jumps over the lazy dog. Explain why the sky is blue."
B, J = 4, 5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # the tiny model's small ops run several times faster on one thread on a busy machine
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def ids(tiny_model):
    return np.asarray(tiny_model.tokenize(PROMPT)[0])


@pytest.fixture(scope="module")
def reference(tiny_model, ids):
    runner = BeamRunner(tiny_model, ids, beams=B, horizon=J)
    ((_, marg),) = list(runner.search(unmasked_inputs(ids)))
    return marg


class _Res:
    """per_position (m, J), scores (m,) and the game of :func:`gilot_attribution`."""

    def __init__(self, game, d):
        self.game, self.per_position, self.scores = game, d, d.mean(1)
        self.solver = game.solver


def gilot_attribution(model, ids, token_keep, *, reference_keep=None, masker="attention_off",
                      **kw):
    """GiLOT distances of token-level keep masks (m, L), through a BeamGame whose features
    are the tokens."""
    L = len(ids)
    game = BeamGame(model, ids, lambda m: m, L, masker=masker, settings=BeamSettings(**kw),
                    reference_keep=reference_keep)
    return _Res(game, game.per_token_values(np.atleast_2d(token_keep)))


def _direct_marginal(model, ids, keep, beams, *, delete=False):
    """Reference implementation: plain full forwards (no cache, no batching tricks) of each
    beam under the prompt with attention mask ``keep`` (or, with ``delete``, with the masked
    tokens removed at unchanged positions); prefix-deduplicated mixture."""
    L = len(ids)
    b, Jm1 = beams.tokens.shape
    eos = set(model.eos_token_ids)
    per_beam, logw = [], []
    for k in range(b):
        if delete:
            seq = np.concatenate([ids[keep], beams.tokens[k]])
            pos = np.concatenate([np.flatnonzero(keep), np.arange(L, L + Jm1)])
            att = np.ones(len(seq), dtype=np.int64)
        else:
            seq = np.concatenate([np.where(keep, ids, 0), beams.tokens[k]])
            pos = np.arange(len(seq))
            att = np.concatenate([keep, np.ones(Jm1, dtype=bool)]).astype(np.int64)
        with torch.no_grad():
            lg = model.model(
                input_ids=torch.as_tensor(seq)[None], attention_mask=torch.as_tensor(att)[None],
                position_ids=torch.as_tensor(pos)[None],
            ).logits[0]
        lp = torch.log_softmax(lg.double(), -1)[len(seq) - Jm1 - 1 :].numpy()  # (J, V)
        w, ended = [0.0], False
        for t in range(Jm1):
            if ended:
                lp[t + 1] = -np.inf
                lp[t + 1, model.eos_token_ids[0]] = 0.0
                w.append(w[-1])
                continue
            w.append(w[-1] + lp[t, beams.tokens[k, t]])
            ended = int(beams.tokens[k, t]) in eos
            if ended:
                lp[t + 1] = -np.inf
                lp[t + 1, model.eos_token_ids[0]] = 0.0
        per_beam.append(lp)
        logw.append(w)
    per_beam, logw = np.stack(per_beam), np.asarray(logw)  # (b, J, V), (b, J)
    out = []
    for j in range(Jm1 + 1):
        seen, mix, mass = set(), 0.0, 0.0
        for k in range(b):
            pre = tuple(beams.tokens[k, :j].tolist())
            if pre in seen:
                continue
            seen.add(pre)
            mix = mix + np.exp(logw[k, j]) * np.exp(per_beam[k, j])
            mass += np.exp(logw[k, j])
        out.append(mix / mass)
    return np.stack(out)


# ---- beam marginals -------------------------------------------------------------------------
def test_beams_equal_transformers_beam_search(tiny_model, ids, reference):
    assert not reference.beams.ended.any()  # no EOS here, so HF's bookkeeping agrees
    with torch.no_grad():
        out = tiny_model.model.generate(
            input_ids=torch.as_tensor(ids)[None], attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            num_beams=B, num_return_sequences=B, do_sample=False, max_new_tokens=J - 1,
            length_penalty=0.0, output_scores=True, return_dict_in_generate=True,
            pad_token_id=3, eos_token_id=tiny_model.eos_token_ids,
        )
    np.testing.assert_array_equal(out.sequences[:, len(ids):].numpy(), reference.beams.tokens)
    np.testing.assert_allclose(
        reference.beams.token_logp.sum(1), out.sequences_scores.numpy(), atol=1e-4
    )


def test_marginals_sum_to_one_and_match_direct_mixture(tiny_model, ids, reference):
    probs = reference.logp.double().exp().numpy()
    np.testing.assert_allclose(probs.sum(-1), np.ones(J), atol=1e-5)
    direct = _direct_marginal(tiny_model, ids, np.ones(len(ids), bool), reference.beams)
    np.testing.assert_allclose(probs, direct, atol=2e-5)


def test_beam_mass_in_unit_interval_and_non_increasing(reference):
    mass = reference.mass
    assert mass.shape == (J,)
    assert mass[0] == pytest.approx(1.0, abs=1e-9)
    assert np.all(mass > 0) and np.all(mass <= 1 + 1e-9)
    assert np.all(np.diff(mass) <= 1e-12)
    assert mass[-1] < mass[0]  # the beams do not cover everything


class _EosLikely:
    """The tiny model with its EOS logit raised, so that some beams end early."""

    def __init__(self, model, bonus):
        self._m, self._bonus = model, bonus

    def __getattr__(self, name):
        return getattr(self._m, name)

    def output_logits(self, h):
        logits = self._m.output_logits(h).clone()
        logits[..., self._m.eos_token_ids[0]] += self._bonus
        return logits


def test_eos_is_absorbing(tiny_model, ids):
    model = _EosLikely(tiny_model, 3.0)
    runner = BeamRunner(model, ids, beams=6, horizon=6)
    eos = tiny_model.eos_token_ids[0]
    ((_, marg),) = list(runner.search(unmasked_inputs(ids)))
    beams = marg.beams
    assert beams.ended.any() and not beams.ended[:, -1].all()  # some beams never end
    probs = marg.logp.double().exp().numpy()
    np.testing.assert_allclose(probs.sum(-1), np.ones(6), atol=1e-5)
    assert np.all(np.diff(marg.mass) <= 1e-12)
    # an ended beam has log-prob 0 after its end and keeps feeding EOS
    assert np.all(beams.token_logp[beams.ended] == 0.0)
    assert np.all(beams.tokens[beams.ended] == eos)
    # the marginal puts the ended beams' weight on EOS
    assert probs[-1, eos] > 0.05


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_beams_of_sliding_window_models_equal_plain_forwards(kind):
    """A prompt longer than the window: the beam caches have the model's sliding layers
    (Qwen2 here mixes a full and a sliding layer, as Gemma-2 does), unmasked and with the
    shared prefix of a masked input."""
    from conftest import make_sliding_model

    model = make_sliding_model(kind)
    ids = np.asarray(model.tokenize(PROMPT)[0])
    assert len(ids) > 3 * model.model.config.sliding_window
    runner = BeamRunner(model, ids, beams=B, horizon=J)
    ((_, ref),) = list(runner.search(unmasked_inputs(ids)))
    direct = _direct_marginal(model, ids, np.ones(len(ids), bool), ref.beams)
    np.testing.assert_allclose(ref.logp.double().exp().numpy(), direct, atol=2e-5)
    keep = np.ones((1, len(ids)), dtype=bool)
    keep[0, 4:6] = False  # the first 4 positions come from the shared prefix
    ((_, shared),) = list(runner.teacher_force(make_inputs(ids, keep), ref.beams))
    direct = _direct_marginal(model, ids, keep[0], ref.beams)
    np.testing.assert_allclose(shared.logp.double().exp().numpy(), direct, atol=2e-5)


# ---- own vs shared beams ----------------------------------------------------------------------
def test_own_and_shared_agree_for_all_keep(tiny_model, ids, reference):
    runner = BeamRunner(tiny_model, ids, beams=B, horizon=J)
    inp = make_inputs(ids, np.ones((2, len(ids)), dtype=bool))
    own = dict(runner.search(inp))
    shared = dict(runner.teacher_force(inp, reference.beams))
    for r in (0, 1):
        np.testing.assert_allclose(own[r].logp.numpy(), reference.logp.numpy(), atol=1e-4)
        np.testing.assert_allclose(shared[r].logp.numpy(), own[r].logp.numpy(), atol=1e-4)
        np.testing.assert_allclose(shared[r].mass, own[r].mass, rtol=1e-4)
        np.testing.assert_array_equal(own[r].beams.tokens, reference.beams.tokens)
    res = {
        mode: gilot_attribution(tiny_model, ids, np.ones((1, len(ids)), bool), beams=B,
                                horizon=J, beam_mode=mode, distance="kl")
        for mode in ("own", "shared")
    }
    for r in res.values():
        np.testing.assert_allclose(r.scores, [0.0], atol=1e-5)


def test_shared_mode_teacher_forces_the_original_beams(tiny_model, ids, reference):
    keep = np.ones((1, len(ids)), dtype=bool)
    keep[0, 2:5] = False
    runner = BeamRunner(tiny_model, ids, beams=B, horizon=J)
    inp = make_inputs(ids, keep)
    ((_, shared),) = list(runner.teacher_force(inp, reference.beams))
    direct = _direct_marginal(tiny_model, ids, keep[0], reference.beams)
    np.testing.assert_allclose(shared.logp.double().exp().numpy(), direct, atol=2e-5)
    ((_, own),) = list(runner.search(inp))
    # the masked input's own beams differ from the shared ones on this random model
    assert not np.array_equal(own.beams.tokens, reference.beams.tokens)


# ---- masking ---------------------------------------------------------------------------------
@pytest.mark.parametrize("distance", ["kl", "ot"])
def test_masking_an_unattended_token_changes_nothing(tiny_model, ids, distance):
    L = len(ids)
    ref = np.ones(L, dtype=bool)
    ref[3] = False  # token 3 is already off in the reference input
    keep = np.ones((2, L), dtype=bool)
    keep[0, 3] = False  # masking it again: no effect
    keep[1, 6] = False  # control: a token the model does attend to
    res = gilot_attribution(tiny_model, ids, keep, beams=B, horizon=J, distance=distance,
                            reference_keep=ref, ot_iter=300)
    assert res.scores[0] == pytest.approx(0.0, abs=2e-3)
    assert res.scores[1] > 20 * max(res.scores[0], 1e-4)
    assert np.all(res.per_position >= 0)


def test_attention_off_equals_deleting_the_tokens(tiny_model, ids, reference):
    keep = np.ones(len(ids), dtype=bool)
    keep[[1, 6, 7]] = False
    runner = BeamRunner(tiny_model, ids, beams=B, horizon=J)
    tail = keep.copy()
    tail[-2:] = False  # deleting the last tokens: Y_1 comes from the last kept token
    for kind, kp in (("attention_off", keep), ("delete", keep), ("delete", tail)):
        inp = make_inputs(ids, kp[None, :], kind=kind)
        ((_, marg),) = list(runner.teacher_force(inp, reference.beams))
        gone = _direct_marginal(tiny_model, ids, kp, reference.beams, delete=True)
        np.testing.assert_allclose(marg.logp.exp().numpy(), gone, atol=2e-5)


def test_attention_off_and_delete_agree_except_for_the_last_token(tiny_model, ids):
    L = len(ids)
    keep = np.ones((1, L), dtype=bool)
    keep[0, 4] = False
    a = make_inputs(ids, keep, kind="attention_off")
    d = make_inputs(ids, keep, kind="delete")
    np.testing.assert_array_equal(a.keep, d.keep)
    assert a.predictor[0] == d.predictor[0] == L - 1
    last = np.ones((1, L), dtype=bool)
    last[0, -2:] = False
    assert make_inputs(ids, last, kind="delete").predictor[0] == L - 3
    assert make_inputs(ids, last, kind="attention_off").predictor[0] == L - 1
    assert make_inputs(ids, last, kind="attention_off").ids[0, -1] == 0


# ---- distances -------------------------------------------------------------------------------
def test_topk_union_is_the_renormalised_top_k_union():
    rng = np.random.default_rng(0)
    lp = torch.log_softmax(torch.as_tensor(rng.normal(size=(2, 3, 12)) * 2), -1)
    ids, p, q, valid = topk_union(lp[0], lp[1], top_k=3)
    for r in range(3):
        want = set(lp[0, r].topk(3).indices.tolist()) | set(lp[1, r].topk(3).indices.tolist())
        got = set(ids[r][valid[r]].tolist())
        assert got == want and int(valid[r].sum()) == len(want)
        assert float(p[r][~valid[r]].abs().sum() + q[r][~valid[r]].abs().sum()) == 0.0
        pr = lp[0, r].exp().numpy()
        sel = np.array(sorted(want))
        np.testing.assert_allclose(
            np.sort(p[r][p[r] > 0].numpy()), np.sort(pr[sel] / pr[sel].sum()), atol=1e-12
        )
        np.testing.assert_allclose(q[r].sum().item(), 1.0, atol=1e-12)


def test_gilot_kl_equals_a_direct_kl(tiny_model, ids, reference):
    L = len(ids)
    keep = np.ones((1, L), dtype=bool)
    keep[0, 7:9] = False
    res = gilot_attribution(tiny_model, ids, keep, beams=B, horizon=J, beam_mode="shared",
                            distance="kl")
    p = _direct_marginal(tiny_model, ids, np.ones(L, bool), reference.beams)
    q = _direct_marginal(tiny_model, ids, keep[0], reference.beams)
    kl = (p * (np.log(p) - np.log(q))).sum(-1)
    np.testing.assert_allclose(res.per_position[0], kl, rtol=1e-3, atol=1e-5)
    assert res.scores[0] == pytest.approx(kl.mean(), rel=1e-3)
    lp = torch.log(torch.as_tensor(p))
    np.testing.assert_allclose(kl_full(lp, lp), np.zeros(J), atol=1e-12)


# ---- the registered explainers ------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_attr(tiny_model):
    return attrlens.explain("the lazy dog is blue", model=tiny_model, method="gilot", beams=3,
                            horizon=3, ot_iter=200, per_position=True)


def test_explain_gilot_result(short_attr):
    a = short_attr
    assert a.method == "gilot"
    assert a.labels == ["the", "lazy", "dog", "is", "blue"]
    assert np.all(np.isfinite(a.scores)) and np.all(a.scores >= 0) and a.scores.max() > 0
    meta = a.extra["metadata"]
    assert len(meta["beam_mass"]) == 3 and meta["beam_mass"][0] == pytest.approx(1.0)
    assert a.per_output_token.shape == (5, 3)
    np.testing.assert_allclose(a.per_output_token.mean(1), a.scores, atol=1e-12)
    assert a.cost["value_calls"] == 6  # n + 1 inputs, like leave-one-out
    assert a.cost["model_forwards"] > 0 and a.cost["tokens_processed"] >= meta["tokens_min"]
    assert not any(k.startswith("_") for k in meta)
    assert meta["model_s"] > 0 and "ot_solver_s" in meta
    assert a.params["solver"] == meta["ot_solver"] == "exact"  # "auto" on CPU
    assert len(meta["beams"]) == 3
    back = Attribution.from_dict(a.to_dict())
    np.testing.assert_allclose(back.scores, a.scores)


def test_deterministic(tiny_model, short_attr):
    again = attrlens.explain("the lazy dog is blue", model=tiny_model, method="gilot",
                             beams=3, horizon=3, ot_iter=200, per_position=True)
    np.testing.assert_array_equal(again.scores, short_attr.scores)


def test_gilot_kl_registered(tiny_model):
    a = attrlens.explain("the lazy dog", model=tiny_model, method="gilot_kl", beams=2,
                         horizon=2, masker="delete")
    assert a.method == "gilot_kl" and a.params["distance"] == "kl"
    assert a.params["masker"] == "delete" and np.all(a.scores >= 0)


def test_beam_game_memoises_counts_and_budgets(tiny_model):
    from attrlens.api import prepare
    from attrlens.explainers.gilot import GilotExplainer

    inputs, scoring = prepare("the lazy dog is blue", model=tiny_model, masker="attention_off")
    ex = GilotExplainer(beams=2, horizon=3, ot_iter=50)
    ex.validate(inputs.n_features)
    game = ex.make_game(inputs, scoring)
    assert isinstance(game, BeamGame) and game.value_kind == "beam_distances"
    # one prefix cache: the scoring engine's
    assert game.runner._cache is scoring.engines[0].prefix
    n = inputs.n_features
    masks = np.ones((3, n), dtype=bool)
    masks[1, 0] = masks[2, 3] = False
    d = game.per_token_values(masks)
    assert d.shape == (3, 3) and np.all(d[0] == 0) and np.all(d[1:] >= 0) and d[1:].max() > 0
    np.testing.assert_allclose(game(masks), d.mean(1))
    c = game.cost()
    assert c.value_calls == 3 and c.model_forwards > 0 and c.tokens_processed > 0
    game.per_token_values(masks[::-1])  # memoised: no new forward
    assert game.cost() == c
    assert game.masked_mass(masks).shape == (3, 3)
    view = BudgetedGame(game, 2)
    with pytest.raises(BudgetExceededError):
        view(masks)
    exp = ex.explain(game)
    assert exp.cost.value_calls == n + 1
    assert exp.cost.model_forwards > 0  # the leave-one-out masks beyond the 3 above
    np.testing.assert_allclose(exp.scores[[0, 3]], d[1:].mean(1), atol=1e-12)


def test_gilot_refuses_a_budget_below_n_plus_1(tiny_model):
    with pytest.raises(ParameterError, match="at least 4"):
        attrlens.explain("the lazy dog", model=tiny_model, method="gilot", budget=3,
                         beams=2, horizon=2)


def test_gilot_needs_its_beam_game():
    from attrlens.explainers.gilot import GilotExplainer

    with pytest.raises(ParameterError):
        GilotExplainer().explain(attrlens.games.Game(lambda m: m.sum(1), 3))


@pytest.mark.parametrize(
    "params",
    [{"beams": 0}, {"horizon": 0}, {"beam_mode": "mine"}, {"distance": "l2"}, {"vocab_k": 0},
     {"solver": "magic"}, {"cost": "third"}, {"shared_weights": "x"}],
)
def test_rejects_bad_parameters(tiny_model, params):
    with pytest.raises(ParameterError):
        attrlens.explain("the lazy dog", model=tiny_model, method="gilot", **params)


# ---- use cases -------------------------------------------------------------------------------
def test_query_weight_is_the_share_on_the_query():
    text = "a b c d"
    attr = Attribution(method="gilot", scores=np.array([0.1, 0.3, 0.2, 0.4]),
                       labels=["a", "b", "c", "d"], spans=[[[0, 1]], [[1, 3]], [[3, 5]], [[5, 7]]],
                       input_text=text)
    aqw = query_weight(attr, [2, 3])
    assert aqw == pytest.approx(0.6 / 1.0)
    assert query_weight(attr, query_span=(3, 7)) == pytest.approx(aqw)
    assert features_in_span(attr, (1, 5)) == [1, 2]
    assert 0 <= query_weight(attr, [0]) <= 1
    with pytest.raises(InputError):
        query_weight(attr, [9])
    neg = Attribution(method="loo", scores=np.array([1.0, -1.0]), labels=["x", "y"])
    with pytest.raises(InputError):
        query_weight(neg, [0])


def test_query_weight_on_a_gilot_attribution(tiny_model, short_attr):
    text = short_attr.input_text
    idx = features_in_span(short_attr, (text.rfind(" is"), len(text)))
    assert [short_attr.labels[i] for i in idx] == ["is", "blue"]
    aqw = query_weight(short_attr, idx)
    s = short_attr.scores
    assert aqw == pytest.approx((s[3] + s[4]) / s.sum(), rel=1e-12)
    assert 0.0 <= aqw <= 1.0


def test_marked_spans():
    clean, spans = marked_spans("Input: a Output: b [[Input: c Output:]]")
    assert clean == "Input: a Output: b Input: c Output:"
    assert [clean[a:b] for a, b in spans] == ["Input: c Output:"]
    with pytest.raises(InputError):
        marked_spans("x [[ y")


def test_compare_aligns_the_differing_word(tiny_model):
    explain = functools.partial(attrlens.explain, model=tiny_model, method="gilot", beams=2,
                                horizon=2, ot_iter=100)
    cmp = run_compare("the quick brown fox", "the quick red fox", explain)
    assert isinstance(cmp, Comparison)
    assert cmp.slots == [([2], [2])]
    assert cmp.a.labels[cmp.slot_a[0]] == "brown" and cmp.b.labels[cmp.slot_b[0]] == "red"
    assert cmp.a.method == cmp.b.method == "gilot"
    row = cmp.summary()[0]
    assert row["a"]["score"] == pytest.approx(cmp.a.scores[2])
    assert row["b"]["score"] == pytest.approx(cmp.b.scores[2])
    for side, attr in (("a", cmp.a), ("b", cmp.b)):
        s = np.asarray(attr.scores, dtype=float)
        # rank 1 = top; ties broken by feature order
        expected = 1 + int(np.sum(s > s[2])) + int(np.sum(s[:2] == s[2]))
        assert row[side]["rank"] == expected
    assert align_slots(["a", "female", "x"], ["a", "male", "x"]) == [([1], [1])]


def test_query_weight_of_a_marked_prompt(tiny_model):
    explain = functools.partial(attrlens.explain, model=tiny_model, method="gilot", beams=2,
                                horizon=2, ot_iter=50)
    res = run_query_weight("the lazy dog [[is blue]]", explain)
    assert [res.attribution.labels[i] for i in res.query_features] == ["is", "blue"]
    s = res.attribution.scores
    assert res.aqw == pytest.approx((s[3] + s[4]) / s.sum(), rel=1e-12)
    assert res.attribution.cost["value_calls"] == 6


# ---- the embedded model ------------------------------------------------------------------------
@pytest.mark.integration
def test_gilot_on_the_default_model(default_model):
    a = attrlens.explain("Name the capital of France.", model=default_model, method="gilot",
                         beams=4, horizon=4)
    assert np.all(np.isfinite(a.scores)) and np.all(a.scores >= 0) and a.scores.max() > 0
    mass = a.extra["metadata"]["beam_mass"]
    assert len(mass) == 4 and mass[0] == pytest.approx(1.0) and 0 < mass[-1] <= 1
    assert "France" in " ".join(a.labels)


def test_ipot_agrees_with_exact_ot(tiny_model, ids):
    L = len(ids)
    keep = np.ones((3, L), dtype=bool)
    keep[0, 2], keep[1, 5:7], keep[2, 10] = False, False, False
    kw = {"beams": 3, "horizon": 3, "beam_mode": "shared"}
    exact = gilot_attribution(tiny_model, ids, keep, solver="exact", **kw)
    ipot = gilot_attribution(tiny_model, ids, keep, solver="ipot", ot_iter=1000, **kw)
    assert exact.solver == "exact" and ipot.solver == "ipot"
    assert gilot_attribution(tiny_model, ids, keep[:1], **kw).solver == "exact"  # auto on CPU
    np.testing.assert_allclose(ipot.per_position, exact.per_position, rtol=2e-2, atol=1e-4)
    assert np.all(exact.scores > 0)


def test_settings_gilot_does_not_read_are_refused_or_recorded_as_not_read(tiny_model):
    """gilot_kl with vocab_k=5, cost=half, solver=ipot gave the default scores and recorded
    those values as if they ran; so did shared_weights with own beams."""
    kw = {"model": tiny_model, "beams": 2, "horizon": 2}
    for method, extra, needle in (("gilot_kl", {"vocab_k": 5, "solver": "ipot"},
                                   "does not read vocab_k, solver here (the KL distance"),
                                  ("gilot", {"shared_weights": "original"},
                                   "does not read shared_weights here (own beams")):
        with pytest.raises(ParameterError, match=re.escape(needle)):
            attrlens.explain("the lazy dog", method=method, **extra, **kw)
    kl = attrlens.explain("the lazy dog", method="gilot_kl", **kw)
    assert kl.params["vocab_k"] is None and kl.params["solver"] is None
    assert kl.params["shared_weights"] is None and kl.params["smoothing"] == 1e-4
    ot = attrlens.explain("the lazy dog", method="gilot", **kw)
    assert ot.params["vocab_k"] == 100 and ot.params["solver"] == "exact"


def test_gilot_follows_prefix_reuse(tiny_model):
    """prefix_reuse=False was recorded, but the beam runner shared the prefix anyway (same
    tokens processed, same cost)."""
    kw = {"model": tiny_model, "method": "gilot", "beams": 2, "horizon": 3,
          "granularity": "token"}
    on = attrlens.explain("the lazy dog is blue", prefix_reuse=True, **kw)
    off = attrlens.explain("the lazy dog is blue", prefix_reuse=False, **kw)
    assert off.params["prefix_reuse"] is False
    assert off.cost["tokens_processed"] > on.cost["tokens_processed"]
    np.testing.assert_allclose(off.scores, on.scores, atol=1e-5)


def test_a_transport_support_beyond_memory_is_refused(tiny_model, ids, monkeypatch):
    # one transport problem is one dense cost matrix that no batching can split: a support
    # of 2 x vocab_k tokens beyond memory is refused before any beam is paid for (a
    # vocab_k of 100,000 on the embedded model was killed at 24 GB)
    vocab = int(tiny_model.embedding_matrix().shape[0])
    assert vocab >= 64
    free = 64 * 64 * 32 * 2  # room for a 64-token support and no more
    monkeypatch.setattr(tiny_model, "free_memory", lambda: free)
    with pytest.raises(ParameterError, match=r"vocab_k=10000 per side.*at most 32") as e:
        BeamGame(tiny_model, ids, lambda m: m, len(ids),
                 settings=BeamSettings(beams=B, horizon=J, vocab_k=10000))
    assert f"support of up to {vocab} tokens" in str(e.value)  # the union never exceeds V
    assert "\n" not in str(e.value)
    with pytest.raises(ParameterError, match="Lower vocab_cap"):
        BeamGame(tiny_model, ids, lambda m: m, len(ids),
                 settings=BeamSettings(beams=B, horizon=J, vocab_p=0.9, vocab_cap=vocab))
    # within memory, and the KL distance (no transport), are accepted
    BeamGame(tiny_model, ids, lambda m: m, len(ids),
             settings=BeamSettings(beams=B, horizon=J, vocab_k=32))
    BeamGame(tiny_model, ids, lambda m: m, len(ids),
             settings=BeamSettings(beams=B, horizon=J, distance="kl", vocab_k=10000))
