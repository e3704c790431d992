"""Method-agnostic analysis: query weight (the first query word after a space counts) and
the comparison of two prompts, on any method's attribution."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

import attrlens
from attrlens.analysis import (
    compare_attributions,
    features_in_span,
    locate_query,
    parse_span,
    query_weight,
    query_weight_of,
    run_query_weight,
)
from attrlens.errors import InputError
from attrlens.result import Attribution
from attrlens.text.prompt import build_prompt
from attrlens.text.segment import segment

ICL = "apple: fruit. carrot: vegetable. [[banana:]]"


def _word_attribution(model, text, scores=None):
    """An attribution of ``text`` with real word features (leading spaces included)."""
    pr = build_prompt(text, model, chat=False)
    _, offsets = model.tokenize(pr.text, add_special_tokens=False)
    fs = segment(pr.text, pr.regions, offsets, "word")
    n = len(fs)
    s = np.arange(1, n + 1, dtype=float) if scores is None else scores
    return Attribution(method="x", scores=s, labels=fs.labels,
                       spans=[[list(sp) for sp in f.spans] for f in fs], input_text=pr.text)


def test_first_query_word_after_a_space_is_in_the_query(tiny_model):
    text, span = locate_query(ICL)
    assert text == "apple: fruit. carrot: vegetable. banana:"
    assert text[span[0]:span[1]] == "banana:"
    attr = _word_attribution(tiny_model, text)
    res = query_weight_of(attr, text, span)
    assert "".join(attr.labels[i].strip() for i in res.query_features) == "banana:"
    last = [i for i, lab in enumerate(attr.labels) if "banana" in lab]
    assert res.query_features[0] == last[0]
    s = attr.scores
    assert res.aqw == pytest.approx(s[res.query_features].sum() / s.sum(), rel=1e-12)


def test_first_query_word_after_a_newline(tiny_model):
    text, span = locate_query("Review: great. Sentiment: positive\n[[Review: dull. Sentiment:]]")
    attr = _word_attribution(tiny_model, text)
    res = query_weight_of(attr, text, span)
    words = [attr.labels[i].strip() for i in res.query_features]
    assert words == ["Review:", "dull.", "Sentiment:"]


def test_the_query_is_found_in_the_explained_copy_not_an_earlier_one(tiny_model):
    """With the same words earlier in the input (a system prompt holding the prompt), the
    query span was placed on that first, unexplained copy: no feature lay inside it."""
    text, span = locate_query("Say it: [[hello world]]")
    system = "System: " + text + "\nUser: "
    attr = _word_attribution(tiny_model, text)
    n = len(system)
    moved = Attribution(method="x", scores=attr.scores, labels=attr.labels,
                        spans=[[[a + n, b + n] for a, b in f] for f in attr.spans],
                        input_text=system + text)
    res = query_weight_of(moved, text, span)
    assert res.query_span == (span[0] + n, span[1] + n)
    assert res.query_text == "hello world"
    assert res.query_features == query_weight_of(attr, text, span).query_features


def test_query_weight_with_gilot_end_to_end(tiny_model):
    explain = functools.partial(attrlens.explain, model=tiny_model, method="gilot", beams=2,
                                horizon=2, ot_iter=50, chat=False)
    res = run_query_weight(ICL, explain)
    labels = [res.attribution.labels[i].strip() for i in res.query_features]
    assert labels and labels[0].startswith("ban")
    assert 0.0 < res.aqw < 1.0


def test_query_weight_is_the_share_on_the_query():
    attr = Attribution(method="m", scores=np.array([0.1, 0.3, 0.2, 0.4]),
                       labels=["a", " b", " c", " d"], spans=[[[0, 1]], [[1, 3]], [[3, 5]], [[5, 7]]],
                       input_text="a b c d")
    assert query_weight(attr, [2, 3]) == pytest.approx(0.6)
    # " c" (3..5) lies in the span of "c d" (4..7): its leading space does not count
    assert features_in_span(attr, (4, 7)) == [2, 3]
    assert query_weight(attr, query_span=(4, 7)) == pytest.approx(0.6)
    with pytest.raises(InputError):
        query_weight(attr, [9])
    with pytest.raises(InputError):
        query_weight(attr, [-1])
    neg = Attribution(method="loo", scores=np.array([1.0, -1.0]), labels=["x", "y"])
    with pytest.raises(InputError):
        query_weight(neg, [0])


def test_locate_query_errors_and_spans():
    assert locate_query("abc def", (4, 7)) == ("abc def", (4, 7))
    with pytest.raises(InputError, match="exactly one"):
        locate_query("no markers here")
    with pytest.raises(InputError, match="outside"):
        locate_query("abc", (1, 9))
    assert parse_span("3:8") == (3, 8)
    with pytest.raises(InputError):
        parse_span("a:b")


def test_compare_attributions_of_any_method():
    a = Attribution(method="loo", scores=np.array([0.1, 0.5, 0.2]), labels=["a", "female", "x"])
    b = Attribution(method="loo", scores=np.array([0.1, 0.05, 0.2]), labels=["a", "male", "x"])
    cmp = compare_attributions(a, b)
    assert cmp.slots == [([1], [1])]
    row = cmp.summary()[0]
    assert row["a"]["rank"] == 1 and row["b"]["rank"] == 3
    assert row["a"]["share"] == pytest.approx(0.5 / 0.8)
    with pytest.raises(InputError):
        compare_attributions(a, a)
    d = cmp.to_dict()
    assert d["slots"] == [[[1], [1]]]


def test_rendering_shows_markup_literally(tiny_model):
    import io

    from rich.console import Console

    from attrlens.analysis import QueryWeight
    from attrlens.report.analysis import show_comparison, show_query_weight

    a = Attribution(method="loo", scores=np.array([0.1, 0.5]), labels=["[/INST]", "[b]x"])
    b = Attribution(method="loo", scores=np.array([0.1, 0.2]), labels=["[/INST]", "[i]y"])
    buf = io.StringIO()
    con = Console(file=buf, width=120)
    show_comparison(compare_attributions(a, b), console=con)
    show_query_weight(QueryWeight(0.8, a, [1], (0, 0)), console=con)
    out = buf.getvalue()
    assert "[b]x" in out and "[i]y" in out and "aqw" in out


def test_compare_counts_case_and_refuses_same_words_before_explaining():
    """'Apple' vs 'apple' is a real contrast (it was aligned away as the same word); prompts
    differing only in spacing were refused after both had been explained."""
    from attrlens.analysis.compare import align_slots, run_compare

    assert align_slots(["I", "bought", "Apple"], ["I", "bought", "apple"]) == [([2], [2])]
    calls = []

    def explain(prompt):
        calls.append(prompt)
        return Attribution(method="loo", scores=np.ones(3), labels=prompt.split())

    cmp = run_compare("I bought Apple", "I bought apple", explain)
    assert cmp.slots == [([2], [2])] and len(calls) == 2
    with pytest.raises(InputError, match="same words"):
        run_compare("The cat sat.", "The cat  sat.", explain)
    # also where the spacing moves inside a word ("a,b" vs "a, b" tokenize into features
    # that align as the same once stripped: refused after both explanations)
    with pytest.raises(InputError, match="same words"):
        run_compare("Say a,b please", "Say a, b please", explain)
    assert len(calls) == 2  # refused before any explanation


def test_compare_share_and_json_with_non_finite_scores(tmp_path):
    from attrlens.cli.analysis import comparison_from_dict, save_comparison

    a = Attribution(method="loo", scores=np.array([np.nan, 0.5, 0.3]),
                    labels=["a", "female", "x"])
    b = Attribution(method="loo", scores=np.array([0.1, np.nan, 0.2]),
                    labels=["a", "male", "x"])
    cmp = compare_attributions(a, b)
    row = cmp.summary()[0]
    # the share is of the finite scores' total |score| (0.8), not 0 because one is NaN
    assert row["a"]["share"] == pytest.approx(0.5 / 0.8, rel=1e-12)
    assert row["a"]["score"] == pytest.approx(0.5, rel=1e-12)
    # b's slot has no finite score: NaN, written as null
    assert np.isnan(row["b"]["score"]) and np.isnan(row["b"]["share"])
    path = save_comparison(cmp, tmp_path / "c.json")
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["summary"][0]["b"]["score"] is None and d["summary"][0]["b"]["share"] is None
    assert d["summary"][0]["a"]["share"] == pytest.approx(0.625, rel=1e-12)
    back = comparison_from_dict(d)
    assert back.summary()[0]["a"]["rank"] == row["a"]["rank"]
