"""gSMILE: perturbed prompts, WMD similarities, the closed-model loop and its failure modes."""

from __future__ import annotations

import numpy as np
import pytest

import attrlens
from attrlens.errors import BackendError, ParameterError, ServerGoneError
from attrlens.explainers.gsmile import GSmileExplainer, minmax_similarity
from attrlens.games.closed import RegenerationGame, prefix_order
from attrlens.models.cache import CallCache
from attrlens.models.embeddings import (
    MiniLMWordEmbeddings,
    ModelInputEmbeddings,
    WordMoversDistance,
    get_word_embeddings,
    nbow,
    wmd_words,
)
from attrlens.models.openai import OpenAIBackend
from attrlens.registry import get_explainer
from attrlens.result import Attribution
from attrlens.solvers.kernels import exponential_kernel
from attrlens.text.mask import TextMasker
from attrlens.text.prompt import build_prompt
from attrlens.text.segment import segment

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 20.0}
PROMPT = "Tell me the capital city of France in one short word please"


class KeywordModel:
    """A stub closed model: answers about Paris only when 'France' is in the prompt."""

    model = "keyword"
    base_url = "stub://"
    capabilities = frozenset({"generate"})

    def __init__(self):
        self.counters = {"api_calls": 0}
        self.prompts: list[str] = []

    def _answer(self, msgs):
        content = msgs[-1]["content"]
        self.prompts.append(content)
        self.counters["api_calls"] += 1
        text = ("Paris is the capital and largest city" if "France" in content
                else "Sorry I really cannot tell you that")
        return type("C", (), {"text": text})()

    def chat(self, msgs, **kw):
        return self._answer(msgs)

    def chat_many(self, list_of_msgs, progress=None, **kw):
        out = []
        for i, m in enumerate(list_of_msgs):
            out.append(self._answer(m))
            if progress:
                progress(i + 1, len(list_of_msgs))
        return out


# ---- pieces ----------------------------------------------------------------------------------


def test_minmax_similarity_and_kernel():
    np.testing.assert_allclose(minmax_similarity(np.array([0.2, 0.4, 0.6])), [1.0, 0.5, 0.0], atol=1e-12)
    np.testing.assert_allclose(minmax_similarity(np.array([0.3, 0.3])), [1.0, 1.0], atol=0)
    w = exponential_kernel(np.array([0.0, 0.25]), 0.25, rescale=True)
    np.testing.assert_allclose(w, [1.0, np.sqrt(np.exp(-1.0))], atol=1e-12)
    # far samples keep their relative weights instead of underflowing to zero
    far = exponential_kernel(np.array([30.0, 30.1]), 0.25, rescale=True)
    assert far.max() == 1.0 and 0 < far.min() < 1


def test_prefix_order_sorts_kept_features_first():
    m = np.array([[0, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1]], bool)
    assert prefix_order(m).tolist() == [2, 1, 0, 3]


def test_perturbed_prompts_delete_features_in_chat_messages(tiny_model):
    pr = build_prompt([{"role": "system", "content": "Be brief."},
                       {"role": "user", "content": "alpha beta beta gamma"}], tiny_model)
    _, offsets = tiny_model.tokenize(pr.text)
    feats = segment(pr.text, pr.regions, offsets, "word")
    pp = TextMasker(pr, feats)
    assert pp.text(np.ones(4, bool)) == "alpha beta beta gamma"
    msgs = pp.messages(np.array([1, 0, 1, 1], bool))
    assert msgs[0] == {"role": "system", "content": "Be brief."}
    assert msgs[1] == {"role": "user", "content": "alpha beta gamma"}
    assert pp.messages(np.array([0, 1, 1, 0], bool))[1]["content"] == " beta beta"
    # the reference's word de-duplication (order kept)
    assert pp.messages(np.ones(4, bool), dedup_words=True)[1]["content"] == "alpha beta gamma"


def test_masks_are_unique_nonempty_and_keep_two_words():
    ex = GSmileExplainer()
    words = np.ones(6, dtype=np.int64)
    m, info = ex.sample_masks(words, 40, seed=0)
    assert len(m) == 40 and len({r.tobytes() for r in m}) == 40
    assert np.all(m.sum(1) >= 2)
    # few features: fewer valid masks than the budget, reported instead of looping
    m, info = ex.sample_masks(np.ones(3, dtype=np.int64), 64, seed=0)
    assert len(m) == 4 and info["short_of_budget"] == 60  # {110, 101, 011, 111}
    q = GSmileExplainer(reference_quirks=True)
    m, info = q.sample_masks(np.ones(8, dtype=np.int64), 60, seed=0)
    assert np.all(m.sum(1) >= 2) and info["topped_up"] > 0


# ---- word embeddings and WMD -----------------------------------------------------------------


def test_wmd_basics(tiny_model, rng):
    emb = ModelInputEmbeddings(tiny_model)
    wmd = WordMoversDistance(emb)
    assert wmd_words("The Fox, jumps!") == ["the", "fox", "jumps"]
    assert nbow(["a", "b", "a"])[1].tolist() == pytest.approx([2 / 3, 1 / 3])
    assert wmd.distance("the quick fox", "The quick, fox!") == 0.0
    d1 = wmd.distance("the quick brown fox", "a lazy dog")
    assert d1 == pytest.approx(wmd.distance("a lazy dog", "the quick brown fox"), abs=1e-12)
    assert d1 > 0
    assert wmd.distance("", "fox") == 1.0  # the reference's convention for empty texts
    many = wmd.many("the quick brown fox", ["a lazy dog", "the quick fox"])
    assert many[0] == pytest.approx(d1, abs=1e-12) and many[1] > 0
    # nBOW WMD is at least the relaxed bound (largest nearest-neighbour transport)
    from attrlens.solvers.rwmd import rwmd

    va, wa = nbow(wmd_words("the the quick brown fox"))
    vb, wb = nbow(wmd_words("a lazy dog"))
    relaxed = rwmd(emb.vectors(va), emb.vectors(vb), weights_a=wa, weights_b=wb)
    assert wmd.distance("the the quick brown fox", "a lazy dog") >= relaxed - 1e-12
    # repeated words carry more mass (nBOW counts), so the distance changes
    assert wmd.distance("the the quick brown fox", "a lazy dog") != pytest.approx(d1, abs=1e-9)


def test_embedding_specs(tiny_model):
    assert get_word_embeddings("surrogate", model=tiny_model) is get_word_embeddings(
        "surrogate", model=tiny_model)
    with pytest.raises(ParameterError, match="minilm"):
        get_word_embeddings("word2vec", model=tiny_model)
    with pytest.raises(ParameterError, match="needs a local language model"):
        get_word_embeddings("surrogate")


def test_minilm_word_vectors_are_semantic():
    emb = MiniLMWordEmbeddings()
    v = emb.vectors(["king", "queen", "carrot"])
    assert v.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-6)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.05


# ---- the explainer ---------------------------------------------------------------------------


def test_keyword_model_gets_its_keyword(tiny_model):
    be = KeywordModel()
    a = attrlens.explain(PROMPT, model=tiny_model, method="gsmile", target_backend=be, budget=48,
                         seed=1)
    labels = a.labels
    assert labels[int(np.argmax(a.scores))] == "France"
    others = np.delete(a.scores, labels.index("France"))
    assert a.scores[labels.index("France")] > 0.5 and np.abs(others).max() < 0.2
    meta = a.extra["metadata"]
    # 48 regenerations (the budget) plus the call for the explained output
    assert a.cost["value_calls"] == 48 and a.cost["api_calls"] == 49
    assert meta["n_samples"] == 48
    # every prompt sent is the explainable text with whole words deleted, order kept
    words = PROMPT.split()
    for sent in be.prompts[1:]:
        kept = sent.split()
        it = iter(words)
        assert all(w in it for w in kept) and len(kept) >= 2
    p = a.params
    for key, val in (("budget", 48), ("p_keep", 0.5), ("min_kept", 2), ("embeddings", "surrogate"),
                     ("ground_cost", None), ("ground_cost_effective", "cosine"), ("kernel_width", 0.25), ("weight_distance", "input"),
                     ("solver", "ols"), ("reference_quirks", False), ("sigma", 0.25)):
        assert p[key] == val, key
    b = attrlens.explain(PROMPT, model=tiny_model, method="gsmile", target_backend=KeywordModel(),
                         budget=48, seed=1)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-12)


def test_a_budget_that_cannot_determine_the_fit_warns(tiny_model):
    # 6 samples for ~10 word coefficients and an intercept: a weighted R^2 of 1.0 with no
    # word said; now a warning names the rank and a budget to try
    with pytest.warns(UserWarning, match=r"gsmile's 6 coalitions determine only [1-6] of its"):
        a = attrlens.explain(PROMPT, model=tiny_model, method="gsmile",
                             target_backend=KeywordModel(), budget=6, seed=1)
    assert a.n_features > 6
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        attrlens.explain(PROMPT, model=tiny_model, method="gsmile",
                         target_backend=KeywordModel(), budget=48, seed=1)
    assert not [w for w in seen if "coalitions determine only" in str(w.message)]


def test_reference_quirks_never_query_the_perturbations(tiny_model):
    be = KeywordModel()
    a = attrlens.explain(PROMPT, model=tiny_model, method="gsmile", target_backend=be, budget=32,
                         reference_quirks=True)
    assert a.cost["value_calls"] == 0 and a.cost["api_calls"] == 1
    assert a.params["ground_cost_effective"] == "euclidean"
    assert a.params["target_distance"] == "wmd(original output, perturbed prompt)"
    assert np.all(np.isfinite(a.scores))
    c = attrlens.explain(PROMPT, model=tiny_model, method="gsmile", target_backend=KeywordModel(),
                         budget=32)
    assert np.abs(c.scores - a.scores).max() > 1e-3  # a different method, not a relabelling


def test_needs_a_closed_model(tiny_model):
    with pytest.raises(ParameterError, match="--target-url"):
        attrlens.explain(PROMPT, model=tiny_model, method="gsmile", budget=8)
    assert get_explainer("gsmile").needs == "closed_model"


@pytest.mark.parametrize(
    "bad",
    [{"p_keep": 0.0}, {"min_kept": -1}, {"embeddings": "glove"}, {"ground_cost": "manhattan"},
     {"weight_distance": "both"}, {"solver": "rf"}, {"kernel_width": 0}],
)
def test_bad_parameters_are_rejected(tiny_model, bad):
    with pytest.raises(ParameterError, match=next(iter(bad))):
        attrlens.explain(PROMPT, model=tiny_model, method="gsmile", target_backend=KeywordModel(),
                         budget=8, **bad)


# ---- over HTTP -------------------------------------------------------------------------------


def test_echo_server_with_cache_and_progress(tiny_model, fake_openai, tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    be = OpenAIBackend(fake_openai.base_url, "fake-model", cache=cache, concurrency=3, **FAST)
    seen = []
    a = attrlens.explain("one two three four five six", model=tiny_model, method="gsmile",
                         target_backend=be, budget=20, max_new_tokens=16,
                         progress=lambda d, t: seen.append((d, t)))
    assert fake_openai.n_chat == 21 and a.cost["api_calls"] == 21
    assert (20, 20) in seen
    # an echo: every deleted word makes the answer less like the original
    assert np.all(a.scores > 0)
    be2 = OpenAIBackend(fake_openai.base_url, "fake-model", cache=cache, **FAST)
    b = attrlens.explain("one two three four five six", model=tiny_model, method="gsmile",
                         target_backend=be2, budget=20, max_new_tokens=16)
    assert fake_openai.n_chat == 21 and b.cost["api_calls"] == 0  # all from the cache
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-12)
    back = Attribution.load(b.save(tmp_path / "g.json"))
    np.testing.assert_allclose(back.scores, a.scores, atol=1e-12)


def test_server_without_logprobs_is_fine(tiny_model, tmp_path):
    from server_fixtures import FaultServer

    srv = FaultServer(None, models=["fake-model"], strip_logprobs=True).start()
    try:
        be = OpenAIBackend(srv.base_url, "fake-model", cache=False, **FAST)
        a = attrlens.explain("one two three four", model=tiny_model, method="gsmile",
                             target_backend=be, budget=8)
    finally:
        srv.close()
    assert a.cost["api_calls"] == 9 and np.all(np.isfinite(a.scores))


def test_unreachable_url_is_one_clear_error(tiny_model):
    from server_fixtures import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"
    be = OpenAIBackend(url, "m", cache=False, max_retries=1, **FAST)
    with pytest.raises(ServerGoneError, match=url.replace(".", r"\.")):
        attrlens.explain(PROMPT, model=tiny_model, method="gsmile", target_backend=be, budget=8)


def test_wrong_model_name_is_one_clear_error(tiny_model, fake_openai):
    be = OpenAIBackend(fake_openai.base_url, "gpt-fake", cache=False, **FAST)
    with pytest.raises(BackendError, match="does not serve a model named 'gpt-fake'"):
        attrlens.explain(PROMPT, model=tiny_model, method="gsmile", target_backend=be, budget=8)


def test_failure_mid_run_is_one_error_and_resumes_from_the_cache(tiny_model, fake_openai, tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    fake_openai.script = ["ok"] * 5 + [("status", 401, None)]
    be = OpenAIBackend(fake_openai.base_url, "fake-model", cache=cache, concurrency=1, **FAST)
    with pytest.raises(BackendError, match="401"):
        attrlens.explain("one two three four five", model=tiny_model, method="gsmile",
                         target_backend=be, budget=12)
    done = fake_openai.n_answered
    be2 = OpenAIBackend(fake_openai.base_url, "fake-model", cache=cache, **FAST)
    a = attrlens.explain("one two three four five", model=tiny_model, method="gsmile",
                         target_backend=be2, budget=12)
    assert a.cost["api_calls"] == 13 - done  # only the calls that never completed


@pytest.mark.integration
def test_real_server_through_faults_gives_the_same_result(default_model, llama_server, fault_proxy):
    prompt = "Paris is the capital of France. Berlin is in Germany. Name the capital of France."
    kw = {"model": default_model, "method": "gsmile", "granularity": "sentence", "budget": 6,
              "max_new_tokens": 8, "seed": 2}
    clean_be = OpenAIBackend(llama_server.base_url, llama_server.model_name, cache=False, **FAST)
    clean = attrlens.explain(prompt, target_backend=clean_be, **kw)
    assert clean.cost["api_calls"] == 1 + clean.extra["metadata"]["n_samples"]
    fault_proxy.script = [("status", 503, None), "drop", ("status", 429, "0"), "drop_after",
                          ("status", 500, None)]
    be = OpenAIBackend(fault_proxy.base_url, llama_server.model_name, cache=False, **FAST)
    faulty = attrlens.explain(prompt, target_backend=be, **kw)
    assert be.counters["retries"] >= 5
    # the retries are part of the run's cost (they were only on the backend's counters)
    assert faulty.cost["retries"] == be.counters["retries"] and clean.cost["retries"] == 0
    assert faulty.output_text == clean.output_text
    np.testing.assert_allclose(faulty.scores, clean.scores, atol=1e-9)


# ---- the regeneration game -------------------------------------------------------------------


def test_regeneration_game_memoises_counts_and_budgets(tiny_model):
    from attrlens.api import prepare
    from attrlens.games import BudgetedGame, BudgetExceededError

    be = KeywordModel()
    inputs, scoring = prepare(PROMPT, model=tiny_model, output="Paris")
    ex = GSmileExplainer()
    game = ex.make_game(inputs, scoring, closed=be)
    assert isinstance(game, RegenerationGame) and game.value_kind == "texts"
    n = game.n_features
    masks = np.ones((3, n), bool)
    masks[1, PROMPT.split().index("France")] = False
    masks[2, 0] = False
    out = game.evaluate(masks)
    assert out[0].startswith("Paris") and out[1].startswith("Sorry") and out[2].startswith("Paris")
    assert be.counters["api_calls"] == 3 and game.n_calls == 3
    assert game.evaluate(masks[::-1]) == out[::-1] and be.counters["api_calls"] == 3  # memo
    c = game.cost()
    assert (c.value_calls, c.api_calls, c.cached_calls) == (3, 3, 0)
    # the texts sent are the prompt with the masked words deleted
    assert game.prompt_texts(masks[1:2])[0] == PROMPT.replace(" France", "")
    view = BudgetedGame(game, 2)
    view.evaluate(masks[:2])
    with pytest.raises(BudgetExceededError):
        view.evaluate(masks)
    with pytest.raises(attrlens.errors.InputError, match="evaluate"):
        game(masks)
    with pytest.raises(ParameterError, match="target-url"):
        ex.make_game(inputs, scoring, closed=None)


def test_gsmile_refuses_a_scalar_game():
    from attrlens.games import Game

    with pytest.raises(ParameterError, match="language model"):
        attrlens.explain_game(lambda m: m.sum(1).astype(float), 4, method="gsmile")
    with pytest.raises(ParameterError, match="regenerations"):
        GSmileExplainer(budget=8).explain(Game(lambda m: m.sum(1).astype(float), 4))
