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


def test_delete_masker_keeps_original_positions(tiny_model):
    pr, ids, fs = _setup(tiny_model)
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


def test_replace_masker_substitutes_mask_token(tiny_model):
    pr, ids, fs = _setup(tiny_model)
    mk = Masker("replace", ids, fs, mask_token_id=0)
    masks = np.ones((1, len(fs)), dtype=bool)
    masks[0, 2] = False
    (out,) = mk.apply(masks)
    assert len(out.ids) == len(ids)
    for t in range(len(ids)):
        assert out.ids[t] == (0 if t in fs[2].tokens else ids[t])


def test_masker_rejects_wrong_shape(tiny_model):
    _, ids, fs = _setup(tiny_model)
    with pytest.raises(InputError, match="shape"):
        Masker("delete", ids, fs).apply(np.ones((2, len(fs) + 1), dtype=bool))
