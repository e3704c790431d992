"""RoPE-LIME: RoPE space, RWMD kernel, Sparse-K, the fit, the closed-model path."""

from __future__ import annotations

import math

import numpy as np
import pytest

import attrlens
from attrlens.errors import BackendError, ParameterError, ServerGoneError
from attrlens.explainers.rope_lime import RopeLimeExplainer
from attrlens.models.cache import CallCache
from attrlens.models.embeddings import rope_vectors
from attrlens.models.openai import OpenAIBackend
from attrlens.registry import get_explainer
from attrlens.result import Attribution

PROMPT = "The quick brown fox jumps over the lazy dog near the river bank today"
OUTPUT = "The capital of France is Paris."
FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 20.0}


def explain(model, **kw):
    kw.setdefault("output", OUTPUT)
    return attrlens.explain(PROMPT, model=model, method="rope_lime", **kw)


# ---- RoPE space ------------------------------------------------------------------------------


def test_rope_vectors_equal_the_models_own_rotation(tiny_model):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    ids = np.array([5, 17, 33, 40, 2, 99])
    pos = np.array([0, 2, 3, 7, 8, 40])  # gapped: positions of survivors after a deletion
    got = rope_vectors(tiny_model, ids, pos, space="embed_rope")
    cfg = tiny_model.config
    d_h = cfg.hidden_size // cfg.num_attention_heads
    # independent RoPE: theta^(-2i/d_h) frequencies, HF rotate_half pairing
    # (transformers 5 keeps theta in rope_parameters, 4.x on the config itself)
    theta = (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta") or cfg.rope_theta
    assert theta == 10000.0  # as tests/conftest.py makes the tiny model
    inv = 1.0 / (theta ** (np.arange(0, d_h, 2) / d_h))
    ang = pos[:, None] * inv[None, :]
    import torch

    cos = torch.tensor(np.concatenate([np.cos(ang)] * 2, -1))[None]
    sin = torch.tensor(np.concatenate([np.sin(ang)] * 2, -1))[None]
    e = tiny_model.input_embeddings.weight.detach().double()[torch.tensor(ids)]
    x = e.view(1, len(ids), -1, d_h).transpose(1, 2)  # (1, H, L, d_h)
    ref, _ = apply_rotary_pos_emb(x, x, cos, sin)
    ref = ref.transpose(1, 2).reshape(len(ids), -1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)
    # the rotation moves the vectors (position 0 stays put)
    assert np.abs(got[1:] - e.numpy()[1:]).max() > 1e-2
    np.testing.assert_allclose(got[0], e.numpy()[0], atol=1e-6)


def test_layer0_keys_equal_the_models_cached_keys(tiny_model):
    import torch

    ids = torch.tensor([[5, 17, 33, 40, 2]])
    pos = torch.tensor([[0, 2, 3, 7, 8]])
    with torch.no_grad():
        out = tiny_model.model(input_ids=ids, position_ids=pos, use_cache=True)
    keys = out.past_key_values.layers[0].keys[0]  # (n_kv, L, d_h), post-RoPE
    ref = keys.transpose(0, 1).reshape(5, -1).double().numpy()
    got = rope_vectors(tiny_model, ids[0].numpy(), pos[0].numpy(), space="layer0_keys")
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_plain_space_is_the_input_embedding(tiny_model):
    ids = np.array([3, 4, 5])
    got = rope_vectors(tiny_model, ids, np.array([10, 20, 30]), space="plain")
    ref = tiny_model.input_embeddings.weight.detach().double().numpy()[ids]
    np.testing.assert_allclose(got, ref, atol=1e-7)


# ---- RWMD ------------------------------------------------------------------------------------


def test_rwmd_is_a_lower_bound_of_exact_wmd(rng):
    from attrlens.solvers.rwmd import rwmd_many, wmd

    for metric in ("cosine", "euclidean"):
        vecs = rng.normal(size=(14, 8))
        keep = rng.random((15, 14)) < 0.6
        keep[:, 0] = True
        d = rwmd_many(vecs, keep_masks=keep, metric=metric)
        w = np.array([wmd(vecs, vecs[k], metric=metric) for k in keep])
        assert np.all(d <= w + 1e-9)
        assert np.all(d > 0)  # every row drops at least one (distinct) vector
        assert np.mean(w - d) > 1e-3  # a real relaxation, not the same number


def test_distances_are_rwmd_between_the_original_and_perturbed_rope_documents(tiny_model):
    """D(z) of the explainer = RWMD between the RoPE vectors of the original prompt's feature
    tokens and those of the perturbed prompt (the masker's ids at its position ids)."""
    from attrlens.solvers.rwmd import rwmd

    a = explain(tiny_model, k=3, budget=12, return_samples=True)
    s = a.extra["metadata"]["samples"]
    masks = np.array(s["masks"], bool)
    from attrlens.text.mask import Masker
    from attrlens.text.prompt import build_prompt
    from attrlens.text.segment import segment

    pr = build_prompt(PROMPT, tiny_model)
    ids, offsets = tiny_model.tokenize(pr.text)
    feats = segment(pr.text, pr.regions, offsets, "word")
    owner = np.array(feats.token_features())
    mk = Masker("delete", ids, feats)
    ft = np.flatnonzero(owner >= 0)
    d0 = rope_vectors(tiny_model, np.array(ids)[ft], ft)
    for z, dz in zip(masks, s["distances"]):
        inp = mk.apply(z[None])[0]
        feat = owner[inp.positions] >= 0
        docz = rope_vectors(tiny_model, inp.ids[feat], inp.positions[feat])
        assert dz == pytest.approx(rwmd(d0, docz), abs=1e-9)
    assert s["distances"][0] == 0.0 and s["weights"][0] == 1.0  # the unmasked prompt


# ---- Sparse-K, kernel and fit on synthetic games ---------------------------------------------


def test_sparse_k_masks_remove_exactly_k_and_include_the_full_prompt():
    ex = RopeLimeExplainer(k=3)
    ex.validate(10)
    m = ex.sample_masks(10, 40, seed=1)  # budget = evaluations, the full prompt included
    assert len(m) == 40 and m[0].all()
    assert np.all((~m[1:]).sum(1) == 3)
    assert len({r.tobytes() for r in m}) == len(m)  # no duplicates
    # B >= C(n, K): every subset, once
    ex = RopeLimeExplainer(k=2)
    ex.validate(6)
    m = ex.sample_masks(6, 100, seed=1)
    assert len(m) == 1 + math.comb(6, 2)


def test_fit_recovers_an_additive_game():
    w_true = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -0.75, 0.25, 1.5])
    ex = RopeLimeExplainer(k=3, alpha=1e-9)
    ex.validate(8)
    masks = ex.sample_masks(8, 200, seed=0)
    y = masks @ w_true + 0.3
    coef, intercept, r2 = ex.fit(masks, y, np.ones(len(y)))
    np.testing.assert_allclose(coef, w_true, atol=1e-6)
    assert intercept == pytest.approx(0.3, abs=1e-6)
    assert r2 == pytest.approx(1.0, abs=1e-9)


def test_kernel_is_one_at_zero_distance_and_recorded():
    ex = RopeLimeExplainer(kernel_width=0.25)
    w, sigma = ex.kernel()(np.array([0.0, 0.25, 0.5]))
    np.testing.assert_allclose(w, [1.0, math.exp(-0.5), math.exp(-2.0)], atol=1e-12)
    assert sigma == 0.25
    # the one 'median' rule: median of the positive distances (the unperturbed row's 0 is
    # left out), the same as gSMILE's
    w, sigma = RopeLimeExplainer(kernel_width="median").kernel()(
        np.array([0.0, 0.1, 0.2, 0.3, 0.4]))
    assert sigma == pytest.approx(0.25) and w[0] == 1.0


# ---- on the tiny model -----------------------------------------------------------------------


def test_k1_equals_leave_one_out(tiny_model):
    loo = attrlens.explain(PROMPT, model=tiny_model, method="loo", output=OUTPUT)
    n = loo.n_features
    a = explain(tiny_model, k=1, budget=n + 1, solver="ols", return_samples=True)
    np.testing.assert_allclose(a.scores, loo.scores, atol=1e-6)
    masks = np.array(a.extra["metadata"]["samples"]["masks"], bool)
    expect = np.ones((n + 1, n), bool)
    expect[np.arange(1, n + 1), np.arange(n)] = False
    assert {r.tobytes() for r in masks} == {r.tobytes() for r in expect}
    # a larger budget cannot add LOO samples: there are only n of them
    b = explain(tiny_model, k=1, budget=2 * n, solver="ols")
    np.testing.assert_allclose(b.scores, loo.scores, atol=1e-6)


def test_a_budget_that_cannot_determine_the_fit_warns(tiny_model):
    import warnings

    with pytest.warns(UserWarning, match=r"rope_lime's 4 coalitions determine only 3 of its"):
        explain(tiny_model, k=1, budget=4, solver="ols")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        explain(tiny_model, k=1, budget=40, solver="ols")  # every LOO sample: full rank
    assert not [w for w in seen if "coalitions determine only" in str(w.message)]


def test_result_records_every_resolution_and_round_trips(tiny_model, tmp_path):
    a = explain(tiny_model, k=2, budget=20, seed=4, return_samples=True)
    p = a.params
    for key, val in (("k", 2), ("sampling", "exact"), ("space", "embed_rope"), ("ground_cost", "cosine"),
                     ("kernel_width", 0.25), ("alpha", 1.0), ("solver", "ridge"),
                     ("kernel", "sqrt(exp(-d^2/width^2))"),
                     ("rwmd_filter_quantile", None), ("k_effective", 2), ("sigma", 0.25),
                     ("masker", "delete")):
        assert p[key] == val, key
    assert p["target"]["target"] == "nll"
    meta = a.extra["metadata"]
    assert meta["n_samples"] == 20 and meta["surrogate_evaluations"] == 20  # budget respected
    assert p["n_perturbations"] == 19
    assert -1.0 <= meta["fit_r2_weighted"] <= 1.0
    s = meta["samples"]
    assert s["distances"][0] == 0.0 and s["weights"][0] == 1.0  # kernel of the full prompt
    assert all(0 < w < 1 for w in s["weights"][1:])
    assert a.cost["api_calls"] == 0
    back = Attribution.load(a.save(tmp_path / "r.json"))
    np.testing.assert_allclose(back.scores, a.scores, atol=1e-12)
    assert back.params["k_effective"] == 2
    again = explain(tiny_model, k=2, budget=20, seed=4)
    np.testing.assert_allclose(again.scores, a.scores, atol=1e-12)
    other = explain(tiny_model, k=2, budget=20, seed=5)
    assert np.abs(other.scores - a.scores).max() > 1e-6


def test_per_output_token_scores_average_to_the_scores(tiny_model):
    a = explain(tiny_model, budget=24)
    assert a.per_output_token.shape[0] == a.n_features
    np.testing.assert_allclose(a.per_output_token.mean(1), a.scores, atol=1e-8)


@pytest.mark.parametrize(("space", "target"), [("layer0_keys", "kl"), ("plain", "js")])
def test_other_spaces_and_divergence_targets_run(tiny_model, space, target):
    a = explain(tiny_model, budget=16, space=space, target=target, sampling="balanced")
    assert np.all(np.isfinite(a.scores)) and a.params["space"] == space
    assert a.params["target"]["target"] == target


def test_rwmd_filter_keeps_close_masks(tiny_model):
    a = explain(tiny_model, budget=16, k=3, sampling="up_to_k", rwmd_filter_quantile=0.5,
                return_samples=True)
    info = a.extra["metadata"]["rwmd_filter"]
    d = np.array(a.extra["metadata"]["samples"]["distances"])
    assert np.all(d[1:] <= info["threshold"] + 1e-9)
    # every kept mask (row 0 = the unperturbed prompt) is in the fit, and no more
    assert info["kept"] == len(d) - 1
    assert 1 <= info["kept"] <= 15


def test_k_is_clipped_to_n_minus_one(tiny_model):
    with pytest.warns(UserWarning, match="k_effective"):
        a = attrlens.explain("red green blue", model=tiny_model, method="rope_lime",
                             output=OUTPUT, k=5, budget=8)
    assert a.params["k_effective"] == a.n_features - 1


@pytest.mark.parametrize(
    "bad",
    [{"k": 0}, {"space": "rope"}, {"sampling": "greedy"}, {"kernel_width": -1.0},
     {"solver": "lasso"}, {"rwmd_filter_quantile": 1.5}, {"ground_cost": "l1"}, {"budget": 1}],
)
def test_bad_parameters_are_rejected(tiny_model, bad):
    with pytest.raises(ParameterError, match=next(iter(bad))):
        explain(tiny_model, **{"budget": 8, **bad})


def test_registered_with_the_right_needs():
    cls = get_explainer("rope_lime")
    assert cls.needs == "local_model" and cls.default_masker == "delete"


# ---- against a closed model (OpenAI-compatible servers) --------------------------------------


def backend_for(server, tmp_path, model=None, **kw):
    cache = kw.pop("cache", CallCache(tmp_path / "calls.sqlite"))
    return OpenAIBackend(server.base_url, model or getattr(server, "model_name", "fake-model"),
                         cache=cache, **{**FAST, **kw})


def test_one_closed_call_for_the_output(tiny_model, fake_openai, tmp_path):
    be = backend_for(fake_openai, tmp_path)
    a = attrlens.explain(PROMPT, model=tiny_model, method="rope_lime", target_backend=be,
                         budget=12, max_new_tokens=8)
    assert a.cost["api_calls"] == 1 and fake_openai.n_chat == 1
    assert a.output_text.startswith("echo:")
    assert a.params["target_model"] == "fake-model"
    # with the output given, no call at all
    b = attrlens.explain(PROMPT, model=tiny_model, method="rope_lime", target_backend=be,
                         budget=12, output=a.output_text)
    assert b.cost["api_calls"] == 0 and fake_openai.n_chat == 1
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-10)


def test_server_without_logprobs_is_fine(tiny_model, tmp_path):
    from server_fixtures import FaultServer

    srv = FaultServer(None, models=["fake-model"], strip_logprobs=True).start()
    try:
        a = attrlens.explain(PROMPT, model=tiny_model, method="rope_lime",
                             target_backend=backend_for(srv, tmp_path), budget=8)
    finally:
        srv.close()
    assert a.cost["api_calls"] == 1 and np.all(np.isfinite(a.scores))


def test_unreachable_url_is_one_clear_error(tiny_model, tmp_path):
    from server_fixtures import free_port

    be = OpenAIBackend(f"http://127.0.0.1:{free_port()}/v1", "m", cache=False,
                       max_retries=1, **FAST)
    with pytest.raises(ServerGoneError, match="127.0.0.1"):
        attrlens.explain(PROMPT, model=tiny_model, method="rope_lime", target_backend=be, budget=8)


def test_wrong_model_name_is_one_clear_error(tiny_model, fake_openai, tmp_path):
    be = backend_for(fake_openai, tmp_path, model="gpt-fake")
    with pytest.raises(BackendError, match="fake-model"):
        attrlens.explain(PROMPT, model=tiny_model, method="rope_lime", target_backend=be, budget=8)


@pytest.mark.integration
def test_real_server_and_faults_give_the_same_result(default_model, llama_server, fault_proxy, tmp_path):
    prompt = "Paris is the capital of France. Berlin is the capital of Germany. What is the capital of France?"
    kw = {"model": default_model, "method": "rope_lime", "granularity": "sentence", "budget": 8,
              "max_new_tokens": 8}
    clean = attrlens.explain(prompt, target_backend=backend_for(llama_server, tmp_path, cache=False), **kw)
    assert clean.cost["api_calls"] == 1 and clean.output_text.strip()
    fault_proxy.script = [("status", 503, None), "drop", ("status", 429, "0"), ("status", 502, None)]
    be = OpenAIBackend(fault_proxy.base_url, llama_server.model_name, cache=False, **FAST)
    faulty = attrlens.explain(prompt, target_backend=be, **kw)
    assert faulty.output_text == clean.output_text
    np.testing.assert_allclose(faulty.scores, clean.scores, atol=1e-9)
    assert be.counters["retries"] >= 4 and faulty.cost["api_calls"] == 1


@pytest.mark.integration
def test_cli_with_a_closed_model(default_model, llama_server, tmp_path, monkeypatch):
    from attrlens.cli import main

    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "r.json"
    rc = main(["explain", "Paris is in France. The sky is blue. Where is Paris?", "--method",
               "rope_lime", "--granularity", "sentence", "--target-url", llama_server.base_url,
               "--target-model", llama_server.model_name, "--k", "1", "--budget", "3",
               "--max-new-tokens", "6", "--json", str(out), "--quiet"])
    assert rc == 0
    a = Attribution.load(out)
    assert a.method == "rope_lime" and a.cost["api_calls"] == 1 and a.params["k"] == 1
    rc = main(["explain", "Paris is in France. The sky is blue. Where is Paris?", "--method",
               "rope_lime", "--granularity", "sentence", "--target-url", llama_server.base_url,
               "--target-model", llama_server.model_name, "--output-text", a.output_text,
               "--k", "1", "--budget", "3", "--json", str(out), "--quiet"])
    b = Attribution.load(out)
    assert rc == 0 and b.cost["api_calls"] == 0
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-9)


def test_locality_game_scores_through_the_scoring_game(tiny_model):
    from attrlens.api import prepare
    from attrlens.games import BudgetedGame, Game
    from attrlens.games.surrogate import LocalityGame

    inputs, scoring = prepare(PROMPT, model=tiny_model, output=OUTPUT)
    ex = RopeLimeExplainer(k=2)
    game = ex.make_game(inputs, scoring)
    assert isinstance(game, LocalityGame)
    n = game.n_features
    masks = ex.sample_masks(n, 6, seed=0)
    view = BudgetedGame(game, 6)
    d = view.locality(masks)  # distances cost no evaluation
    assert view.n_calls == 0 and d[0] == 0.0 and np.all(d[1:] > 0)
    np.testing.assert_allclose(view(masks), scoring(masks), atol=0)  # the same values
    assert game.n_calls == 6 and scoring.n_calls == 6  # one memo shared
    assert game.cost().model_forwards >= 1 and game.cost().value_calls == 6
    with pytest.raises(ParameterError, match="local surrogate"):
        RopeLimeExplainer(budget=8).explain(Game(lambda m: m.sum(1).astype(float), 4))


def test_a_one_token_output_has_one_per_token_column_and_round_trips(tiny_model, tmp_path):
    """The per-output-token fit of a 1-token output came back (n,), not (n, 1): the result
    saved, and its file was refused on loading."""
    one = tiny_model.tokenizer.decode(tiny_model.tokenize(" Paris")[0][:1])
    r = explain(tiny_model, output=one, budget=16, k=2)
    assert len(r.output_tokens) == 1
    assert r.per_output_token.shape == (len(r.scores), 1)
    np.testing.assert_allclose(r.per_output_token[:, 0], r.scores, atol=1e-9)
    r.save(tmp_path / "r.json")
    back = Attribution.load(tmp_path / "r.json")
    np.testing.assert_allclose(back.per_output_token, r.per_output_token)
