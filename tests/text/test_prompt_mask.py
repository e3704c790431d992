"""Prompts (chat regions) and maskers."""

from __future__ import annotations

import numpy as np
import pytest

from attrlens.errors import InputError
from attrlens.text.mask import Masker
from attrlens.text.prompt import build_prompt
from attrlens.text.segment import segment


def test_chat_prompt_explains_only_user_content(tiny_model):
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "Another one?"},
    ]
    pr = build_prompt(msgs, tiny_model)
    assert pr.chat
    assert [pr.text[a:b] for a, b in pr.regions] == ["Name a colour.", "Another one?"]
    assert pr.region_messages == (1, 3)
    assert pr.text.endswith("<|im_start|>assistant\n")


def test_text_prompt_uses_template_by_default_and_raw_on_request(tiny_model):
    pr = build_prompt("Hello there", tiny_model)
    assert pr.chat and pr.text.startswith("<|im_start|>user\n")
    raw = build_prompt("Hello there", tiny_model, chat=False)
    assert raw.text == "Hello there" and raw.regions == ((0, 11),)


@pytest.mark.parametrize("bad", ["", "   ", [{"role": "user", "content": ""}]])
def test_empty_prompt_is_rejected(tiny_model, bad):
    with pytest.raises(InputError, match="empty"):
        build_prompt(bad, tiny_model)


def test_malformed_messages_rejected(tiny_model):
    with pytest.raises(InputError, match="role"):
        build_prompt([{"content": "x"}], tiny_model)


def _setup(tiny_model, text="The quick brown fox jumps"):
    pr = build_prompt(text, tiny_model)
    ids, offsets = tiny_model.tokenize(pr.text)
    fs = segment(pr.text, pr.regions, offsets, "word")
    return pr, np.asarray(ids), fs


@pytest.mark.integration
@pytest.mark.parametrize("text", ["  The cat sat", "   The cat", "\n\nThe cat sat"])
@pytest.mark.parametrize("granularity", ["word", "token"])
def test_a_token_of_template_and_user_text_stays_frozen(default_model, text, granularity):
    """The template's newline and the user's leading blank make one token ("\n "): it was
    masked with the first word, so deleting "The" deleted template text too."""
    pr = build_prompt(text, default_model)
    ids, offsets = default_model.tokenize(pr.text)
    (rs, re_), = pr.regions
    straddling = [t for t, (a, b) in enumerate(offsets) if a < rs < b]
    assert straddling  # the case itself: one token holds template and user characters
    fs = segment(pr.text, pr.regions, offsets, granularity)
    for f in fs:
        for t in f.tokens:
            a, b = offsets[t]
            assert rs <= a and b <= re_, (f.label, pr.text[a:b])
    assert fs[0].label == "The"
    # deleting every feature leaves the template whole
    kept = Masker("delete", np.asarray(ids), fs).apply(np.zeros((1, len(fs)), bool))[0]
    left = "".join(pr.text[offsets[p][0]:offsets[p][1]] for p in kept.positions)
    user = left.split("<|im_start|>user\n")[1]  # (only the straddling blank is left)
    assert not user.split("<|im_end|>")[0].strip() and left.endswith("assistant\n"), left


def test_delete_masker_keeps_original_positions(tiny_model):
    _pr, ids, fs = _setup(tiny_model)
    mk = Masker("delete", ids, fs)
    masks = np.ones((3, len(fs)), dtype=bool)
    masks[1, 1] = False
    masks[2, [0, 3]] = False
    full, one, two = mk.apply(masks)
    np.testing.assert_array_equal(full.ids, ids)  # all-keep reproduces the input
    assert full.first_change == len(ids)
    removed = set(fs[1].tokens)
    assert list(one.positions) == [p for p in range(len(ids)) if p not in removed]
    np.testing.assert_array_equal(one.ids, ids[one.positions])
    assert one.first_change == min(removed)
    assert two.first_change == min(fs[0].tokens)


def test_replace_tokens_masker_substitutes_every_masked_token(tiny_model):
    _pr, ids, fs = _setup(tiny_model)
    mk = Masker("replace_tokens", ids, fs, mask_token_id=0)
    masks = np.ones((1, len(fs)), dtype=bool)
    masks[0, 2] = False
    (out,) = mk.apply(masks)
    assert len(out.ids) == len(ids) and out.output_start is None
    for t in range(len(ids)):
        assert out.ids[t] == (0 if t in fs[2].tokens else ids[t])


def test_replace_masker_puts_one_mask_token_per_masked_feature():
    """Hand-built: features f0 = tokens 0-1, f1 = 2-4, f2 = 5, frozen token 6, f3 = 7-8."""
    ids = np.array([10, 11, 12, 13, 14, 15, 16, 17, 18])
    regions = ((0, 6), (7, 9))
    offsets = [(i, i + 1) for i in range(9)]
    fs = segment("aabbbcXdd", regions, offsets, "span", spans=[(0, 2), (2, 5), (5, 6), (7, 9)])
    assert [list(f.tokens) for f in fs] == [[0, 1], [2, 3, 4], [5], [7, 8]]
    mk = Masker("replace", ids, fs, mask_token_id=99)
    masks = np.array([
        [1, 1, 1, 1],  # nothing masked: the prompt itself
        [1, 0, 1, 1],  # the 3-token feature -> one mask token
        [0, 0, 1, 0],  # two adjacent masked features -> two mask tokens; frozen 16 kept
        [1, 1, 0, 0],
    ], dtype=bool)
    full, one, two, three = mk.apply(masks)
    np.testing.assert_array_equal(full.ids, ids)
    assert full.first_change == 9 and full.output_start is None
    expected = [
        (one, [10, 11, 99, 15, 16, 17, 18], 2),
        (two, [99, 99, 15, 16, 99], 0),
        (three, [10, 11, 12, 13, 14, 99, 16, 99], 5),
    ]
    for out, seq, first in expected:
        np.testing.assert_array_equal(out.ids, seq)
        np.testing.assert_array_equal(out.positions, np.arange(len(seq)))  # contiguous
        assert out.first_change == first and out.output_start == len(seq)
        # the unchanged prefix is the prompt's own (prefix reuse stays valid)
        np.testing.assert_array_equal(out.ids[:first], ids[:first])


def _brute_force_mean_logprob(model, prompt_ids, output_ids):
    """Mean log p(o_t | prompt, o_<t) from one plain forward (positions 0..L+T-1)."""
    import torch

    seq = torch.as_tensor(np.concatenate([prompt_ids, output_ids]).astype(np.int64))[None]
    with torch.inference_mode():
        logits = model.model(input_ids=seq).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    L, T = len(prompt_ids), len(output_ids)
    return float(np.mean([lp[L - 1 + t, output_ids[t]].item() for t in range(T)]))


def test_loo_with_sentence_features_equals_brute_force_one_mask_token_prompts(tiny_model):
    import attrlens

    text = "The quick brown fox jumps. A stitch in time saves nine. The sky is blue."
    output = " Paris is the capital"
    a = attrlens.explain(text, model=tiny_model, method="loo", granularity="sentence",
                         masker="replace", output=output, chat=False)
    assert a.params["masker"] == "replace" and a.n_features == 3
    ids, offsets = tiny_model.tokenize(text, add_special_tokens=True)
    out_ids, _ = tiny_model.tokenize(output)
    fs = segment(text, ((0, len(text)),), offsets, "sentence")
    mask_id = tiny_model.mask_token_id
    full = _brute_force_mean_logprob(tiny_model, np.asarray(ids), np.asarray(out_ids))
    expected = []
    for f in fs:
        toks = sorted(f.tokens)
        one = np.concatenate([ids[: toks[0]], [mask_id], ids[toks[-1] + 1:]])
        expected.append(full - _brute_force_mean_logprob(tiny_model, one, np.asarray(out_ids)))
    np.testing.assert_allclose(a.scores, expected, atol=2e-4)
    # the per-token option differs (the prompt keeps its length)
    b = attrlens.explain(text, model=tiny_model, method="loo", granularity="sentence",
                         masker="replace_tokens", output=output, chat=False)
    assert b.params["masker"] == "replace_tokens"
    assert np.max(np.abs(b.scores - a.scores)) > 1e-3


def test_masker_rejects_wrong_shape(tiny_model):
    _, ids, fs = _setup(tiny_model)
    with pytest.raises(InputError, match="shape"):
        Masker("delete", ids, fs).apply(np.ones((2, len(fs) + 1), dtype=bool))


def test_mask_spans_deletes_or_replaces_keeping_whitespace():
    from attrlens.text.mask import mask_spans

    text = "The cat sat on the mat."
    spans = [(3, 7), (18, 23)]  # " cat", " mat." (words carry their leading space)
    assert mask_spans(text, spans) == "The sat on the"
    assert mask_spans(text, spans, replacement="<unk>") == "The <unk> sat on the <unk>"
    # a window of the text, absolute offsets
    assert mask_spans(text, [(3, 7)], start=0, end=11) == "The sat"
    assert mask_spans(text, [(3, 4)], replacement="<unk>") == text  # blank span kept


def test_a_chat_template_that_refuses_the_messages_gives_one_line(tiny_model):
    """Templates raise on messages they do not take (Gemma: no system role; Llama-2 and
    Mistral: roles must alternate); that is the user's input, said on one line."""
    import copy

    from attrlens.models.hf import HFModel

    tok = copy.deepcopy(tiny_model.tokenizer)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    model = HFModel(tiny_model.model, tok, info=tiny_model.info)
    ok = build_prompt([{"role": "user", "content": "Hi there"}], model)
    assert ok.chat and "Hi there" in ok.text
    with pytest.raises(InputError, match="refused the messages \\(system/user\\): System role "
                                         "not supported") as ei:
        build_prompt([{"role": "system", "content": "Be terse."},
                      {"role": "user", "content": "Hi there"}], model)
    assert "\n" not in str(ei.value)


def _with_template(tiny_model, template):
    import copy

    from attrlens.models.hf import HFModel

    tok = copy.deepcopy(tiny_model.tokenizer)
    tok.chat_template = template
    return HFModel(tiny_model.model, tok, info=tiny_model.info)


QWEN_LIKE = (  # injects a default system prompt when the messages have none
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] "
    "+ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize("user", ["a", "user", "im", "helpful assistant",
                                  "You are a helpful assistant."])
def test_the_user_text_is_found_where_the_template_put_it_not_in_its_markup(tiny_model, user):
    """A user text that also occurs in the template's own text (inside '<|im_start|>', the
    role name, a default system prompt) is the message the template rendered, never the
    first match in the markup before it."""
    model = _with_template(tiny_model, QWEN_LIKE)
    pr = build_prompt(user, model)
    where = pr.text.rindex("<|im_start|>user\n") + len("<|im_start|>user\n")
    assert pr.regions == ((where, where + len(user)),)
    pr = build_prompt([{"role": "system", "content": "You are a helpful assistant."},
                       {"role": "user", "content": user}], model)
    assert len(pr.regions) == 1 and pr.region_messages == (1,)
    a, b = pr.regions[0]
    assert pr.text[a:b] == user and pr.text[:a].endswith("<|im_start|>user\n")


def test_a_template_that_strips_or_rewrites_the_content_is_still_located(tiny_model):
    """A template that trims the content is located by the stripped text; one that rewrites
    it (upper-cases) cannot be located and is refused on one line, as before."""
    strip = _with_template(tiny_model, QWEN_LIKE.replace("m['content']", "m['content'] | trim"))
    pr = build_prompt("  a  ", strip)
    a, b = pr.regions[0]
    assert pr.text[a:b] == "a" and pr.text[:a].endswith("<|im_start|>user\n")
    upper = _with_template(tiny_model, QWEN_LIKE.replace("m['content']", "m['content'] | upper"))
    with pytest.raises(InputError, match="changed the content of message 0"):
        build_prompt("Hello there", upper)


def test_a_span_whose_token_reaches_outside_the_explainable_text_says_so():
    """The span's only token also holds a blank of the frozen text before it, so it stays
    frozen; the error said the token was held more by other spans (there are none)."""
    text = "Review: few films"
    regions = [(8, len(text))]  # only the review's words can be explained
    offsets = [(0, 6), (6, 7), (7, 11), (11, 17)]  # "Review", ":", " few", " films"
    with pytest.raises(InputError) as ei:
        segment(text, regions, offsets, "span", spans=[(8, 11), (12, 17)])
    msg = str(ei.value)
    assert "' few' at (7, 11), which reaches outside the text that can be explained" in msg
    assert "other spans hold more" not in msg and "\n" not in msg
