"""explain()'s own arguments: wrong types and options that would be ignored are refused on
one line before any model is loaded; the reduction asked for is the one used."""

from __future__ import annotations

import numpy as np
import pytest

import attrlens
from attrlens.errors import AttrlensError, InputError, ParameterError

PROMPT = "The quick brown fox jumps over the lazy dog"


@pytest.mark.parametrize(("kwargs", "needle"), [
    ({"granularity": 3}, "granularity must be a string"),
    ({"masker": ["delete"]}, "masker must be a string"),
    ({"target": 5}, "target must be a string"),
    ({"target": "nlll"}, "Did you mean 'nll'"),
    ({"reduction": "median"}, "'reduction' parameter of explain"),
    ({"top_k": 0}, "'top_k' parameter of explain must be an int in the range [1, inf)"),
    ({"top_k": 2.5}, "'top_k' parameter"),
    ({"top_k": None}, "'top_k' parameter"),
    ({"contrast": 5, "target": "contrastive"}, "contrast must be a string"),
    ({"contrast": " cat"}, "only by the contrastive target"),
    ({"spans": [(0, 3)]}, "Spans are the features of granularity 'span'"),
    ({"chat": "no"}, "'chat' parameter of explain"),
    ({"progress": 5}, "progress must be a callable"),
    ({"prefix_reuse": "no"}, "'prefix_reuse' parameter of explain must be a bool"),
    ({"top_k": 5}, ("top_k is the vocabulary union of the kl/js/tv targets; loo scores the "
                   "nll target")),
    ({"top_k": 5, "method": "gilot"}, "gilot scores no target"),
    # (ig reads one forward's gradients: prefix_reuse=False was accepted and did nothing)
    ({"prefix_reuse": False, "method": "ig"},
     "prefix_reuse is a setting of the scoring engine, which ig does not run"),
    ({"prefix_reuse": False, "method": "attention"}, "which attention does not run"),
    # (a given output was explained whole; max_new_tokens=2 did nothing)
    ({"max_new_tokens": 2}, "max_new_tokens limits a generated answer, and the output is given"),
])
def test_wrong_arguments_are_refused_before_the_model_is_loaded(kwargs, needle):
    """Each failed with a raw TypeError deep inside (a non-string name), was silently
    ignored (contrast without the contrastive target, spans without span granularity,
    chat='no' read as true) or gave zeros (top_k=0); the model path does not exist, so an
    error about it would mean the check came too late."""
    with pytest.raises(ParameterError) as ei:
        attrlens.explain(PROMPT, model="/no/such/model", output=" x", **kwargs)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_max_new_tokens_with_a_given_output_is_kept_where_the_method_regenerates():
    """gsmile has the served model answer each perturbed prompt: max_new_tokens limits those
    answers whether the explained output is given or not."""
    from attrlens.api import check_explain

    check_explain(PROMPT, method="gsmile", output=" x", max_new_tokens=8, served=True)
    with pytest.raises(ParameterError, match="leave max_new_tokens out"):
        check_explain(PROMPT, method="loo", output=" x", max_new_tokens=8)


def test_one_span_not_in_a_list_is_refused(tiny_model):
    with pytest.raises(InputError, match=r"list of \(start, end\) pairs, e.g. \[\(0, 5\)\]"):
        attrlens.explain(PROMPT, model=tiny_model, output=" x", granularity="span",
                         spans=(0, 3), chat=False)


def test_the_reduction_asked_for_is_used_and_recorded(tiny_model):
    """A divergence target with reduction 'sum' sums over the output tokens (it was
    silently averaged); logprob and contrastive are totals and refuse 'mean'."""
    kw = {"model": tiny_model, "output": " over the lazy", "chat": False, "method": "loo"}
    n_out = len(tiny_model.tokenize(" over the lazy")[0])
    assert n_out > 1
    mean = attrlens.explain(PROMPT, target="kl", **kw)
    total = attrlens.explain(PROMPT, target="kl", reduction="sum", **kw)
    assert mean.params["target"]["reduction"] == "mean"
    assert total.params["target"]["reduction"] == "sum"
    assert np.abs(mean.scores).max() > 0
    # (teacher-forced per-token values are the same; only the reduction differs)
    np.testing.assert_allclose(total.scores, n_out * mean.scores, rtol=1e-6, atol=1e-9)
    assert attrlens.explain(PROMPT, target="logprob", **kw).params["target"]["reduction"] \
        == "sum"
    with pytest.raises(AttrlensError, match="total over the output tokens"):
        attrlens.explain(PROMPT, target="logprob", reduction="mean", **kw)


@pytest.mark.parametrize(("prompt", "kwargs", "needle"), [
    ("a \ud800 b", {"output": " x"}, "prompt holds invalid Unicode at character 2 (the lone"),
    (PROMPT, {"output": " x\udcff"}, "The output holds invalid Unicode at character 2"),
    (PROMPT, {"output": " x", "target": "contrastive", "contrast": "\udfff"},
     "The contrast output holds invalid Unicode at character 0"),
    ([{"role": "user", "content": "hi"}, {"role": "user", "content": "b\udc80"}],
     {"output": " x"}, "The content of chat message 1 holds invalid Unicode"),
])
def test_text_that_is_not_valid_unicode_is_refused_on_one_line(tiny_model, prompt, kwargs,
                                                              needle):
    """A lone surrogate (bytes that are not UTF-8 read with surrogateescape, as Python reads
    a command line) failed inside the tokenizer with 'TextEncodeInput must be Union[...]'."""
    with pytest.raises(InputError) as ei:
        attrlens.explain(prompt, model=tiny_model, **kwargs)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_a_command_line_prompt_that_is_not_utf8(tiny_dir):
    """The same from a shell: the argument's bytes are not UTF-8; exit 2, one line."""
    import os
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "attrlens", "explain", b"caf\xe9 au lait", "--model",
         os.fsencode(tiny_dir), "--output-text", " x", "--quiet"],
        capture_output=True, timeout=120, check=False)
    err = proc.stderr.decode("utf-8", "replace").strip()
    assert proc.returncode == 2, err
    assert err.count("\n") == 0
    assert "prompt holds invalid Unicode at character 3 (the lone surrogate U+DCE9" in err


@pytest.mark.parametrize(("method", "kwargs", "needle"), [
    ("gilot", {"target": "kl"}, "'gilot' does not read target= (--target)"),
    ("gilot", {"reduction": "sum"}, "'gilot' does not read reduction= (--reduction)"),
    ("grad_x_input", {"masker": "delete"}, "'grad_x_input' does not read masker= (--masker)"),
    ("attention", {"target": "logprob", "masker": "replace"},
     "'attention' does not read target= (--target) or masker= (--masker)"),
])
def test_settings_a_method_does_not_read_are_refused(method, kwargs, needle):
    """GiLOT's value is a distance between beam distributions and the gradient and attention
    methods read sum_t log p(o_t) of the whole prompt: a target or masker given to them was
    silently ignored and recorded in the result as if used (the path does not exist: the
    check comes before the model loads)."""
    with pytest.raises(ParameterError) as ei:
        attrlens.explain(PROMPT, model="/no/such/model", output=" x", method=method, **kwargs)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_results_record_only_the_settings_their_method_reads(tiny_model):
    kw = {"model": tiny_model, "output": " x", "chat": False}
    loo = attrlens.explain(PROMPT, **kw).params
    gilot = attrlens.explain(PROMPT, method="gilot", beams=2, max_new_tokens=2,
                             model=tiny_model, chat=False).params
    grad = attrlens.explain(PROMPT, method="grad_x_input", **kw).params
    assert loo["target"]["target"] == "nll" and loo["masker"] == "delete"
    assert "target" not in gilot and gilot["masker"] == "attention_off"
    assert "target" not in grad and "masker" not in grad
    # the scoring engine's settings, null where nothing read them: the gradient methods
    # run no engine, GiLOT batches its beams by its own max_batch_tokens, and a given
    # output was not generated (all were recorded as if they ran)
    assert loo["prefix_reuse"] is True and loo["scoring_batch_tokens"] == 4096
    assert loo["max_new_tokens"] is None  # the output was given
    assert grad["prefix_reuse"] is None and grad["scoring_batch_tokens"] is None
    assert gilot["prefix_reuse"] is True and gilot["scoring_batch_tokens"] is None
    assert gilot["max_new_tokens"] == 2
    from attrlens.registry import get_explainer

    assert get_explainer("gsmile").reads == ()  # text deletions, a distance between answers


def test_top_k_is_read_by_the_divergence_targets(tiny_model):
    """top_k=5 with the nll target was silently ignored; with kl it sets the union read."""
    a = attrlens.explain(PROMPT, model=tiny_model, output=" x", chat=False, target="kl",
                         top_k=5)
    assert a.params["target"]["top_k_union"] == 5


def test_numpy_spans_and_token_ids_are_taken(tiny_model):
    """A (k, 2) array of spans, NumPy int offsets, and an array of output ids were refused;
    they give the same result as the lists."""
    ref = attrlens.explain(PROMPT, model=tiny_model, output=" x", chat=False,
                           granularity="span", spans=[(0, 3), (4, 9)])
    ids = np.asarray(ref.output_token_ids)
    for spans in (np.array([[0, 3], [4, 9]]), [(np.int64(0), np.int64(3)), (4, 9)]):
        a = attrlens.explain(PROMPT, model=tiny_model, output=ids, chat=False,
                             granularity="span", spans=spans)
        assert a.labels == ["The", "quick"] and a.output_token_ids == ref.output_token_ids
        np.testing.assert_allclose(a.scores, ref.scores, atol=1e-6)


@pytest.mark.parametrize("chat", [False, True])
def test_overlapping_spans_are_named_in_the_users_offsets(tiny_model, chat):
    """With the chat template the error said 'overlap at (121, 123)' for a 19-character
    prompt: offsets into the rendered template, which the user never wrote."""
    with pytest.raises(InputError, match=r"The spans \(0, 8\) and \(6, 12\) overlap"):
        attrlens.explain("Paris is in France.", model=tiny_model, output=" x", chat=chat,
                         granularity="span", spans=[(0, 8), (6, 12)])


@pytest.mark.parametrize("output", [" x", [42]])
def test_gilot_refuses_a_given_output(output):
    """GiLOT scores the model's own beam distributions whatever output is given: with an
    output it scored its beams and recorded the given text as the output it explained
    (the path does not exist: the check comes before the model loads)."""
    for method in ("gilot", "gilot_kl"):
        with pytest.raises(ParameterError, match="not a given output") as ei:
            attrlens.explain(PROMPT, model="/no/such/model", output=output, method=method)
        assert "\n" not in str(ei.value)


def test_a_contrast_equal_to_the_output_is_refused(tiny_model):
    """log p(output) - log p(contrast) is 0 under every mask when both are the same tokens:
    before, every score came back 0, with exit 0 and no word."""
    with pytest.raises(InputError, match="is the explained output itself"):
        attrlens.explain(PROMPT, model=tiny_model, output=" over the", target="contrastive",
                         contrast=" over the", chat=False)
    # a different alternative is explained (not all zero)
    attr = attrlens.explain(PROMPT, model=tiny_model, output=" over the",
                            target="contrastive", contrast=" under a", chat=False)
    assert np.abs(attr.scores).max() > 0


def test_progress_moves_within_a_batch_of_masks(tiny_model, monkeypatch):
    """Progress is reported from the start of each call of the game and after every forward
    of the scoring engine: before, a batch of 256 masks reported only when all of it was
    done, so a kernel_shap bar sat at "2/2" (the two ends) for the whole run."""
    monkeypatch.setattr(type(tiny_model), "scoring_batch_tokens", lambda self: 512)
    calls: list[tuple[int, int]] = []
    attrlens.explain(PROMPT + " and the cat", model=tiny_model, output=" over the lazy",
                     method="kernel_shap", budget=300, chat=False,
                     progress=lambda d, t: calls.append((d, t)))
    rounds = [i for i, (d, _) in enumerate(calls) if d == 0]
    assert calls[0] == (0, 2) and len(rounds) == 2  # the two ends, then 298 masks
    second = calls[rounds[1]:]
    assert second[0] == (0, 298) and second[-1] == (298, 298)
    done = [d for d, _ in second]
    assert done == sorted(done)
    # steps inside the first batch of 256 masks (one per forward of at most 512 tokens)
    assert len({d for d in done if 0 < d < 256}) >= 3, calls
