"""Game (memo, counting) and Attribution (JSON schema round trip, bad files)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import attrlens
from attrlens.errors import AttrlensError, InputError, ParameterError
from attrlens.games import Game, as_game
from attrlens.result import REQUIRED_KEYS, SCHEMA, Attribution


def test_game_memoises_and_counts_distinct_masks():
    calls = []

    def fn(m):
        calls.append(len(m))
        return m.sum(1).astype(float)

    g = Game(fn, 4)
    m = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=bool)
    np.testing.assert_array_equal(g(m), [2, 2, 0])
    assert g.n_calls == 2 and calls == [2]
    np.testing.assert_array_equal(g(m[:1]), [2])
    assert g.n_calls == 2 and calls == [2]  # memo hit, fn not called again


def test_game_rejects_bad_shapes_and_values():
    g = Game(lambda m: np.zeros(len(m)), 3)
    with pytest.raises(InputError, match="shape"):
        g(np.ones((2, 4), dtype=bool))
    bad = Game(lambda m: np.full(len(m), np.nan), 2)
    with pytest.raises(InputError, match="NaN"):
        bad(np.ones((1, 2), dtype=bool))
    short = Game(lambda m: np.zeros(1), 2)
    with pytest.raises(InputError, match="one number per mask"):
        short(np.array([[1, 1], [1, 0], [0, 1]], dtype=bool))
    with pytest.raises(InputError, match="features"):
        as_game(g, 5)


def _attr():
    return Attribution(
        method="loo",
        scores=np.array([0.5, -0.25, np.nan]),
        labels=["a", "b", "c"],
        spans=[[[0, 1]], [[1, 3]], [[3, 4]]],
        input_text="abcd",
        output_text="out",
        params={"budget": None},
        model={"id": "m", "sha256": "00"},
        per_output_token=np.ones((3, 2)),
        interactions={"index": "fourier", "order": 2, "terms": [{"features": [0, 1], "value": 0.1}]},
        cost={"model_forwards": 3, "tokens_processed": 10, "api_calls": 0, "wall_s": 0.1},
        seed=7,
    )


def test_attribution_json_has_exactly_the_schema_keys_and_round_trips(tmp_path):
    a = _attr()
    path = a.save(tmp_path / "r.json")
    d = json.loads(path.read_text())
    assert set(REQUIRED_KEYS) <= set(d) and d["schema"] == SCHEMA
    assert d["scores"][2] is None  # non-finite floats become null, the file stays valid JSON
    assert d["input"]["features"][1] == {"index": 1, "label": "b", "spans": [[1, 3]]}
    b = Attribution.load(path)
    np.testing.assert_array_equal(b.scores[:2], a.scores[:2])
    assert np.isnan(b.scores[2])
    assert b.labels == a.labels and b.seed == 7 and b.model == a.model
    assert b.interactions == a.interactions
    np.testing.assert_array_equal(b.per_output_token, a.per_output_token)
    assert b.top_k(1) == [(0, "a", 0.5)]


def test_loading_something_else_fails_clearly(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        Attribution.load(p)
    p.write_text(json.dumps({"schema": "other"}))
    with pytest.raises(InputError, match="not an attrlens result"):
        Attribution.load(p)
    with pytest.raises(InputError, match="does not exist"):
        Attribution.load(tmp_path / "missing.json")


def test_html_report_escapes_text():
    a = _attr()
    a.input_text = "<script>x</script>"
    a.spans = [[[0, 8]], [[8, 9]], [[9, 18]]]
    html = a.to_html()
    assert "<script>x" not in html and "&lt;script&gt;" in html


def test_html_report_shows_beam_confidence():
    a = _attr()
    a.extra = {"metadata": {"beam_mass": [1.0, 0.5]}}
    html = a.to_html()
    assert "Confidence" in html and "<td>0.500</td>" in html


def test_local_model_results_record_torch_threads_and_versions(tiny_model):
    import torch

    import attrlens
    from attrlens.result import Attribution

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = attrlens.explain("The quick brown fox", model=tiny_model, output=" jumps")
    finally:
        torch.set_num_threads(before)
    env = a.to_dict()["environment"]
    assert env["torch_threads"] == 1 and env["torch"] == torch.__version__
    back = Attribution.from_dict(a.to_dict())
    assert back.to_dict()["environment"] == env


@pytest.mark.parametrize(("fn", "n", "needle"), [
    (lambda m: m.sum(1), 4.0, "'n_features' parameter of explain_game must be an int"),
    (lambda m: m.sum(1), "4", "'n_features' parameter of explain_game must be an int"),
    (lambda m: np.ones((len(m), 2)), 4, "returned an array of shape (5, 2) (ndarray) for 5"),
    (lambda m: None, 4, "returned an array of shape () (NoneType) for 5 masks"),
    (lambda m: ["a"] * len(m), 4, "returned text ('a') for 5 masks; it must return numbers"),
    (lambda m: [[1.0], [1.0, 2.0]] * 3, 4, "returned values that are not numbers (list)"),
])
def test_explain_game_refuses_wrong_features_and_values_on_one_line(fn, n, needle):
    """Before: raw TypeError (a float n), ValueError 'cannot reshape array' (two values per
    mask), IndexError (None) and ValueError 'could not convert string to float'."""
    with pytest.raises(AttrlensError) as ei:
        attrlens.explain_game(fn, n, method="loo")
    assert needle in str(ei.value) and "\n" not in str(ei.value)
    assert attrlens.explain_game(lambda m: m.sum(1), 4, method="loo").scores.tolist() == [1] * 4


def test_the_result_schema_lists_every_interaction_index():
    """docs/result_schema.md names the values of ``interactions.index``: all of them."""
    import pathlib

    from attrlens.solvers.indices import INDICES

    doc = (pathlib.Path(__file__).parents[1] / "docs" / "result_schema.md").read_text()
    listed = re.search(r"`index` is one of ([a-z, ]+);", doc)
    assert listed is not None
    assert {w.strip() for w in listed.group(1).split(",")} == set(INDICES)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"labels": [1, 2, 3]}, "labels must be strings, one per feature; got int 1"),
    ({"labels": "abc"}, "got the string 'abc'"),
    ({"progress": 5}, "progress must be a callable"),
])
def test_explain_game_refuses_labels_and_progress_it_cannot_use(kwargs, needle):
    """Int labels made a result that could not be loaded back, a string was split into
    letters, and progress=5 ended in "'int' object is not callable"."""
    with pytest.raises(ParameterError) as ei:
        attrlens.explain_game(lambda m: m.sum(1) * 1.0, 3, **kwargs)
    assert needle in str(ei.value)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"scores": [[1.0, 2.0]], "labels": ["a"]}, "one number per feature (1-D)"),
    ({"scores": [1.0, 2.0], "labels": ["a", "b"], "spans": [[[0, 1]]]},
     "the spans of every feature or none"),
    ({"scores": [1.0], "labels": [1]}, "labels are strings"),
    # (rope_lime gave a 1-token output's per-token scores as (n,): the saved file then failed
    # to load)
    ({"scores": [1.0, 2.0], "labels": ["a", "b"], "per_output_token": [0.5, 1.0]},
     "one row per feature and one column per output token (2 x T); got shape (2,)"),
    ({"scores": [1.0], "labels": ["a"], "per_output_token": [[0.5], [1.0]]}, "got shape (2, 1)"),
    ({"scores": [1.0], "labels": ["a"], "interactions": [1]}, "interactions are None or a dict"),
])
def test_an_attribution_that_could_not_be_saved_or_loaded_is_refused(kwargs, needle):
    with pytest.raises(InputError, match=re.escape(needle)):
        Attribution(method="x", **kwargs)


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"spans": [[[0, 3]]]}, "span [0, 3] outside the input text (0..0)"),
    ({"labels": ["a", "b"], "scores": [1.0, 2.0], "spans": [[[0, 3]], [[2, 4]]],
      "input_text": "abcd"}, "features 0 and 1 overlap at (2, 3)"),
    ({"method": ""}, "'method' must be a non-empty string"),
    ({"seed": "3"}, "'seed' must be an integer or null"),
    ({"labels": [], "scores": []}, "no features"),
    ({"extra": {"tags": {"a"}}}, "cannot be written as JSON"),
])
def test_a_result_that_load_would_refuse_is_not_written(kwargs, needle, tmp_path):
    """Attribution(...) made and saved results that Attribution.load and attrlens show then
    refused (and a set in extra raised a bare TypeError from json)."""
    args = {"method": "m", "scores": [1.0], "labels": ["a"], **kwargs}
    a = Attribution(**args)
    path = tmp_path / "sub" / "x.json"
    with pytest.raises(InputError, match=re.escape(needle)):
        a.save(path)
    assert not path.exists() and not path.parent.exists()
    ok = Attribution(method="m", scores=[1.0], labels=["a"], spans=[[[0, 1]]], input_text="a")
    assert Attribution.load(ok.save(path)).labels == ["a"]
    page = tmp_path / "new" / "r.html"  # to_html makes the folder, as save does
    ok.to_html(page)
    assert page.read_text().startswith("<!doctype html>")


def test_a_per_token_game_takes_a_matrix_per_call():
    """Game(fn, n, per_token=True): fn returns (m, T), as documented; it was refused."""
    w = np.arange(1.0, 7.0)
    g = Game(lambda m: np.stack([m @ w * (t + 1) for t in range(3)], 1), 6, per_token=True)
    a = attrlens.explain_game(g, 6, method="loo")
    np.testing.assert_allclose(a.scores, 2 * w)  # the mean over t of (t + 1) w
    np.testing.assert_allclose(a.per_output_token, w[:, None] * [1, 2, 3])
    bad = Game(lambda m: m @ w, 6, per_token=True)
    with pytest.raises(InputError, match=r"one row of per-token values per mask"):
        attrlens.explain_game(bad, 6, method="loo")


def test_faith_banzhaf_records_the_order_that_ran():
    a = attrlens.explain_game(lambda m: m.sum(1) * 1.0, 3, method="faith_banzhaf", order=5,
                              budget=8)
    assert a.params["order"] == 3 == a.interactions["order"]


def test_complex_values_are_refused_not_cast():
    """A value function returning complex numbers lost their imaginary parts silently."""
    with pytest.raises(InputError, match="complex numbers"):
        attrlens.explain_game(lambda m: m.sum(1) * (1 + 1j), 3)


def test_a_budget_below_the_minimum_names_both_ways_to_raise_it():
    """evaluate has no --budget option: the message also names its method:budget=N form."""
    with pytest.raises(AttrlensError, match=r"Raise --budget to 5 or more \(loo:budget=5 in "
                                            r"evaluate's --methods\)"):
        attrlens.explain_game(lambda m: m.sum(1) * 1.0, 4, method="loo", budget=2)


def test_a_plain_games_non_finite_values_or_scores_are_not_blamed_on_a_model():
    """explain_game has no model, yet its errors said 'the model overflows in its dtype;
    load it in float32' and 'check the model's precision'."""
    huge = lambda m: np.where(np.asarray(m)[:, 0], 1.5e308, -1.5e308)
    with pytest.raises(InputError, match="gave NaN or inf scores: it must return finite "
                                         "numbers.*rescale it") as e:
        attrlens.explain_game(huge, 3, method="loo")
    assert "dtype" not in str(e.value)
    with pytest.raises(InputError, match="returned NaN or inf; it must return finite") as e:
        attrlens.explain_game(lambda m: np.full(len(m), np.nan), 3, method="loo")
    assert "model" not in str(e.value)


@pytest.mark.parametrize("method", ["loo", "lime", "kernel_shap", "banzhaf", "spex",
                                    "proxyspex"])
def test_the_recorded_budget_never_exceeds_the_coalitions_there_are(method):
    """lime, spex, proxyspex and loo recorded the cap given (100 on 3 features, where 8
    coalitions exist); kernel_shap and banzhaf recorded 8: one rule for every method."""
    a = attrlens.explain_game(lambda m: m.astype(float) @ np.arange(1.0, 4.0), 3,
                              method=method, budget=100)
    assert a.params["budget"] == 8 and a.cost["value_calls"] <= 8


def test_attributions_compare_by_identity_not_by_raising():
    """== on two results raised (numpy's "truth value of an array is ambiguous")."""
    a = Attribution(method="x", scores=[1.0, 2.0], labels=["a", "b"])
    b = Attribution(method="x", scores=[1.0, 2.0], labels=["a", "b"])
    assert a != b and a in [b, a] and len({a, b}) == 2 and [a].index(a) == 0


@pytest.mark.parametrize("wrap", [list, np.array, lambda v: np.array(v, dtype=object)])
def test_text_values_are_refused_not_parsed(wrap):
    """A value function returning text ("3.0", as read from a file) was parsed as numbers:
    a "nan" or a locale's "2,5" then became a value or a message about shapes."""
    with pytest.raises(InputError, match=r"returned text \('3.0'\) for 4 masks; it must "
                                         r"return numbers"):
        attrlens.explain_game(lambda m: wrap([f"{x:.1f}" for x in m.sum(1)]), 3)


def test_tensor_values_and_none_are_read_or_named():
    """A bfloat16 tensor of values was refused as "values that are not numbers (Tensor)"
    (numpy reads no bfloat16), and None for a mask was reported as "NaN or inf"."""
    import torch

    def bf16(m):
        return torch.tensor(m.sum(1) * 1.0, dtype=torch.bfloat16, requires_grad=True)

    a = attrlens.explain_game(bf16, 3, method="loo")
    np.testing.assert_array_equal(a.scores, [1.0, 1.0, 1.0])
    with pytest.raises(InputError, match="returned None for some of the 4 masks"):
        attrlens.explain_game(lambda m: [None] * len(m), 3, method="loo")
