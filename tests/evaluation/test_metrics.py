"""Supporting-fact metrics (METHODS §5.5) and the HotpotQA loader."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from attrlens.errors import InputError
from attrlens.evaluation.hotpotqa import load_hotpotqa, spans_in
from attrlens.evaluation.metrics import (
    auroc,
    bootstrap_ci,
    mrr,
    precision_at_k,
    recall_at_k,
    supporting_fact_metrics,
    top_k_exact_match,
)

# the shared data folder beside the repository (../shared/data)
DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "hotpotqa_dev_distractor_100.jsonl"


def brute_auroc(s, g):
    pos = [a for a, l in zip(s, g) if l]
    neg = [a for a, l in zip(s, g) if not l]
    tot = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg))
    return tot / (len(pos) * len(neg))


def test_auroc_matches_pairwise_count_with_ties(rng):
    for _ in range(20):
        s = rng.integers(0, 4, size=12).astype(float)  # many ties
        g = rng.random(12) < 0.4
        if g.all() or not g.any():
            continue
        assert auroc(s, g) == pytest.approx(brute_auroc(s, g), abs=1e-12)


def test_auroc_extremes_and_one_class():
    g = np.array([0, 1, 0, 1, 0], bool)
    assert auroc([0, 5, 1, 4, 2], g) == 1.0
    assert auroc([5, 0, 4, 1, 3], g) == 0.0
    assert np.isnan(auroc([1, 2, 3], [True, True, True]))


@pytest.mark.parametrize("gold", [[], [0, 1, 2, 3]])
def test_every_metric_is_undefined_with_one_class_only(gold):
    # no gold feature (labels [], HotpotQA facts whose titles are absent) or only gold ones:
    # no ranking is better than another, so nothing may enter the means (was auroc 0.5,
    # mrr 0 for no gold; 1.0 everywhere for all gold)
    m = supporting_fact_metrics([0.3, 0.1, 0.9, 0.2], gold)
    assert set(m) == {"auroc", "precision_at_g", "recall_at_2", "recall_at_5", "top2_em", "mrr"}
    assert all(np.isnan(v) for v in m.values()), m
    labels = np.isin(np.arange(4), gold)
    for f in (auroc, precision_at_k, mrr, top_k_exact_match):
        assert np.isnan(f([0.3, 0.1, 0.9, 0.2], labels))
    assert np.isnan(recall_at_k([0.3, 0.1, 0.9, 0.2], labels, 2))


def test_ranking_metrics_on_a_known_order():
    # order by score: 3, 0, 4, 1, 2 ; gold = {0, 2}
    s = np.array([0.8, 0.3, 0.1, 0.9, 0.5])
    g = np.array([1, 0, 1, 0, 0], bool)
    assert precision_at_k(s, g) == pytest.approx(0.5)  # top-2 = {3, 0}
    assert recall_at_k(s, g, 2) == pytest.approx(0.5)
    assert recall_at_k(s, g, 5) == pytest.approx(1.0)
    assert top_k_exact_match(s, g, 2) == 0.0
    assert mrr(s, g) == pytest.approx(0.5)
    s2 = np.array([0.8, 0.3, 0.85, 0.1, 0.5])
    assert top_k_exact_match(s2, g, 2) == 1.0
    assert mrr(s2, g) == 1.0


def test_ties_are_expected_over_random_orders_not_feature_order():
    # all-equal scores rank nothing: gold at the front or at the back scores the same
    # (the stable sort gave gold [0, 1] precision/recall/mrr 1.0 and gold [3, 4] 0 / 0.25)
    for gold in ([0, 1], [3, 4], [1, 3]):
        m = supporting_fact_metrics([0, 0, 0, 0, 0], gold)
        assert m["auroc"] == 0.5
        assert m["precision_at_g"] == pytest.approx(2 / 5, abs=1e-12)  # E hits = 2 * 2/5
        assert m["recall_at_2"] == pytest.approx(2 / 5, abs=1e-12)
        assert m["recall_at_5"] == pytest.approx(1.0, abs=1e-12)
        assert m["top2_em"] == pytest.approx(1 / 10, abs=1e-12)  # 1 / C(5, 2)
        # first gold at j = 1..4 with P = (5 - j) / 10
        assert m["mrr"] == pytest.approx(sum((5 - j) / 10 / j for j in range(1, 5)), abs=1e-12)


def brute_tie_average(f, s, g):
    """f averaged over every order of the tied features (ranked with a stable sort of the
    scores after a permutation of the features)."""
    n = len(s)
    vals = []
    for perm in itertools.permutations(range(n)):
        p = np.asarray(perm)
        vals.append(f(np.asarray(s)[p], np.asarray(g)[p]))
    return float(np.mean(vals))


def stable(metric):
    # the ranking by a stable sort: what a single tie order gives
    def f(s, g):
        order = np.argsort(-s, kind="stable")
        hits = g[order]
        return {"p2": hits[:2].sum() / 2, "r3": hits[:3].sum() / g.sum(),
                "em": float(set(order[:g.sum()].tolist()) == set(np.flatnonzero(g).tolist())),
                "mrr": 1.0 / (np.flatnonzero(hits)[0] + 1)}[metric]
    return f


def test_tie_aware_metrics_equal_the_average_over_tie_orders(rng):
    for _ in range(12):
        s = rng.integers(0, 3, size=6).astype(float)  # many ties
        g = rng.random(6) < 0.4
        if g.all() or not g.any():
            continue
        tol = 1e-9
        assert precision_at_k(s, g, 2) == pytest.approx(brute_tie_average(stable("p2"), s, g), abs=tol)
        assert recall_at_k(s, g, 3) == pytest.approx(brute_tie_average(stable("r3"), s, g), abs=tol)
        assert top_k_exact_match(s, g) == pytest.approx(brute_tie_average(stable("em"), s, g), abs=tol)
        assert mrr(s, g) == pytest.approx(brute_tie_average(stable("mrr"), s, g), abs=tol)
        assert auroc(s, g) == pytest.approx(brute_auroc(s, g), abs=1e-12)


def test_supporting_fact_metrics_bundle_and_errors():
    m = supporting_fact_metrics([0.1, 0.9, 0.8, 0.0], [1, 2])
    assert m["auroc"] == 1.0 and m["top2_em"] == 1.0 and m["recall_at_2"] == 1.0
    assert m["precision_at_g"] == 1.0 and m["mrr"] == 1.0
    with pytest.raises(InputError, match="outside"):
        supporting_fact_metrics([0.1, 0.2], [5])
    with pytest.raises(InputError, match="must match"):
        auroc([1, 2, 3], [True, False])
    with pytest.raises(InputError, match="NaN"):
        auroc([1, np.nan], [True, False])


def test_bootstrap_ci_brackets_the_mean():
    v = np.random.default_rng(1).normal(0.7, 0.1, size=50)
    mean, lo, hi = bootstrap_ci(v, seed=0)
    assert lo < mean < hi
    assert mean == pytest.approx(v.mean(), abs=1e-12)
    assert hi - lo < 0.1


# ---- HotpotQA loader --------------------------------------------------------------------------


def _record(**kw):
    rec = {
        "id": "x",
        "dev_index": 0,
        "question": "Who?",
        "answer": "A",
        "type": "bridge",
        "context": [["T1", ["One.", " Two.", " Three."]], ["T2", ["Four.", " ", " Five."]],
                    ["T3", ["Six."]]],
        "supporting_facts": [["T1", 1], ["T2", 2], ["T9", 0], ["T1", 7]],
    }
    rec.update(kw)
    return rec


def test_loader_maps_gold_and_spans(tmp_path):
    f = tmp_path / "h.jsonl"
    f.write_text(json.dumps(_record()) + "\n\n", encoding="utf-8")
    (item,) = load_hotpotqa(f)
    # the blank sentence of T2 is dropped and T2's facts renumbered: (T2, 2) -> index 4
    assert item.sentences == ["One.", " Two.", " Three.", "Four.", " Five.", "Six."]
    assert item.gold == [1, 4]  # facts outside the context are left out
    assert item.meta["dropped_blank_sentences"] == 1
    text, spans = item.prompt()
    assert [text[a:b].strip() for a, b in spans] == [s.strip() for s in item.sentences]
    assert "Question: Who?" in text and text.endswith("Answer:")
    # deleting every sentence span leaves only the fixed frame
    kept = "".join(text[a:b] for a, b in zip([0] + [e for _, e in spans], [s for s, _ in spans] + [len(text)]))
    assert "One" not in kept and "Title: T2" in kept
    shifted = spans_in("<pre>" + text + "<post>", text, spans)
    assert shifted[0] == (spans[0][0] + 5, spans[0][1] + 5)


def test_truncation_keeps_gold_paragraphs(tmp_path):
    f = tmp_path / "h.jsonl"
    f.write_text(json.dumps(_record()) + "\n", encoding="utf-8")
    (item,) = load_hotpotqa(f)
    t = item.truncated(0, seed=0)
    assert [p[0] for p in t.paragraphs] == ["T1", "T2"]
    assert [t.sentences[i] for i in t.gold] == [" Two.", " Five."]
    t1 = item.truncated(1, seed=0)
    assert len(t1.paragraphs) == 3


def test_loader_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_hotpotqa(tmp_path / "none.jsonl")
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(InputError, match="not a HotpotQA record"):
        load_hotpotqa(f)


@pytest.mark.skipif(not DATA.is_file(), reason="shared HotpotQA sample not present")
def test_shared_sample_gold_is_complete():
    items = load_hotpotqa(DATA, n=20)
    assert len(items) == 20
    for it in items:
        assert len(it.gold) == len({tuple(f) for f in it.supporting_facts})
        _, spans = it.prompt()
        assert len(spans) == it.n_sentences
