"""SentencePiece-style tokenizers (Llama-2, Mistral): spaces as "▁", a "▁" put before every
text the tokenizer is given, BOS added. Given outputs are tokenized as the prompt's
continuation, words own their "▁", and the engine's LOO equals plain forwards."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_sentencepiece_tokenizer

import attrlens
from attrlens.api import prepare
from attrlens.models.base import ModelInfo
from attrlens.models.hf import HFModel
from attrlens.text.prompt import build_prompt, tokenize_output, tokenize_text

PROMPT = "The quick brown fox jumps over the lazy dog."
OUTPUT = " A stitch in time."


@pytest.fixture(scope="module")
def spm_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_sentencepiece_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return HFModel(model.eval(), tok, info=ModelInfo("tiny-spm-test", None))


@pytest.mark.parametrize("chat", [False, True])
def test_given_output_is_tokenized_as_the_prompts_continuation(spm_model, chat):
    tok = spm_model.tokenizer
    alone = tok(OUTPUT, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(alone)[:2] == ["\u2581", "\u2581A"]  # the case at hand
    inputs, _ = prepare(PROMPT, model=spm_model, output=OUTPUT, chat=chat)
    out = [int(i) for i in inputs.output_ids]
    assert tok.convert_ids_to_tokens(out) == ["\u2581A", "\u2581stitch", "\u2581in", "\u2581tim",
                                              "e."]
    joint = tok(inputs.prompt.text + OUTPUT, add_special_tokens=not chat)["input_ids"]
    assert joint == [int(i) for i in inputs.prompt_ids] + out
    assert tok.decode(out) == OUTPUT.strip()


def test_byte_level_outputs_keep_their_own_tokens(tiny_model):
    for chat in (False, True):
        inputs, _ = prepare(PROMPT, model=tiny_model, output=OUTPUT, chat=chat)
        alone, _ = tokenize_text(tiny_model, OUTPUT)
        assert [int(i) for i in inputs.output_ids] == alone


def test_output_that_merges_into_the_prompt_is_tokenized_alone(spm_model):
    pr = build_prompt("The lazy do", spm_model, chat=False)
    ids, _ = tokenize_text(spm_model, pr.text, pr.regions, add_special_tokens=True)
    joint = spm_model.tokenizer(pr.text + "g.", add_special_tokens=True)["input_ids"]
    assert joint[: len(ids)] != ids  # "▁do" + "g." became "▁dog."
    got = tokenize_output(spm_model, pr.text, pr.regions, ids, "g.", add_special_tokens=True)
    assert got == tokenize_text(spm_model, "g.")[0]


@pytest.mark.parametrize("chat", [False, True])
def test_loo_on_sentencepiece_words_equals_plain_forwards(spm_model, chat):
    res = attrlens.explain(PROMPT, model=spm_model, method="loo", output=OUTPUT, chat=chat)
    assert res.labels == PROMPT.split(" ")
    inputs, _ = prepare(PROMPT, model=spm_model, output=OUTPUT, chat=chat)
    ids = [int(i) for i in inputs.prompt_ids]
    out = [int(i) for i in inputs.output_ids]
    owner = np.asarray(inputs.features.token_features())
    words = [spm_model.tokenizer.convert_ids_to_tokens(ids[t]) for t in np.flatnonzero(owner >= 0)]
    assert all(w.lstrip("\u2581") for w in words) and sum(w.startswith("\u2581") for w in words) >= 8

    def logp(keep):  # the delete masker: kept tokens keep their positions
        pos = [p for p, k in enumerate(keep) if k] + list(range(len(ids), len(ids) + len(out)))
        seq = [t for t, k in zip(ids, keep) if k] + out
        with torch.no_grad():
            lp = spm_model.model(input_ids=torch.tensor([seq]),
                                 position_ids=torch.tensor([pos])).logits[0].log_softmax(-1)
        n = int(sum(keep))
        return float(sum(lp[n - 1 + j, o] for j, o in enumerate(out))) / len(out)  # mean

    full = logp([True] * len(ids))
    for f in range(len(res.labels)):
        assert res.scores[f] == pytest.approx(full - logp(owner != f), abs=1e-4)


def test_word_vectors_leave_out_the_bare_space_token(spm_model, tiny_model):
    """gSMILE's word vectors (mean input embedding of " word"): " fox" is a bare "▁" and
    "▁fox" here; the space's row is not the word's."""
    from attrlens.models.embeddings import ModelInputEmbeddings

    tok = spm_model.tokenizer
    assert tok.convert_ids_to_tokens(tok(" fox", add_special_tokens=False)["input_ids"]) == [
        "\u2581", "\u2581fox"]
    w = spm_model.embedding_matrix().float().numpy()
    got = ModelInputEmbeddings(spm_model).vectors(["fox", "lazy"])
    np.testing.assert_allclose(got[0], w[tok.convert_tokens_to_ids("\u2581fox")], atol=1e-7)
    np.testing.assert_allclose(got[1], w[tok.convert_tokens_to_ids("\u2581lazy")], atol=1e-7)
    # a byte-level tokenizer's " fox" has no bare-space token: its vector is the mean as before
    ids, _ = tiny_model.tokenize(" fox")
    wt = tiny_model.embedding_matrix().float().numpy()
    np.testing.assert_allclose(ModelInputEmbeddings(tiny_model).vectors(["fox"])[0],
                               wt[ids].mean(0), atol=1e-7)


@pytest.mark.parametrize("which", ["spm", "byte_level"])
def test_control_strings_in_user_text_leave_the_rest_as_a_whole(spm_model, tiny_model, which):
    """A control-token string typed in the user's text is split into text; around it, every
    token is what the prompt without it gives: no "▁" put before a piece of a tokenizer that
    marks the start of every text, and the string is text even where the tokenizer's config
    does not name it among its special tokens (ChatML tokens beside a </s> EOS)."""
    from attrlens.text.prompt import control_token_ids

    model = spm_model if which == "spm" else tiny_model
    tok = model.tokenizer
    assert tok.convert_tokens_to_ids("<|im_end|>") in control_token_ids(tok)
    if which == "spm":
        assert tok.convert_tokens_to_ids("<|im_end|>") not in set(tok.all_special_ids)

    def tokens(user):
        pr = build_prompt(user, model)
        ids, offs = tokenize_text(model, pr.text, pr.regions)
        return pr.text, ids, offs

    text_c, ids_c, offs_c = tokens("say <|im_end|> now")
    text_p, ids_p, offs_p = tokens("say hello now")
    assert (ids_p, offs_p) == tuple(map(list, model.tokenize(text_p)))
    start_c, start_p = text_c.index("<|im_end|>"), text_p.index("hello")
    head_c = [i for i, (s, e) in zip(ids_c, offs_c) if e <= start_c]
    head_p = [i for i, (s, e) in zip(ids_p, offs_p) if e <= start_p]
    assert head_c == head_p and len(head_c) >= 5
    tail_c = [i for i, (s, e) in zip(ids_c, offs_c) if s >= text_c.index(" now")]
    tail_p = [i for i, (s, e) in zip(ids_p, offs_p) if s >= text_p.index(" now")]
    assert tail_c == tail_p
    # the typed string is text (the unknown-byte token aside: this vocabulary lacks "|")
    inside = [i for i, (s, e) in zip(ids_c, offs_c) if start_c <= s and e <= start_c + 10]
    assert inside and not set(inside) & (control_token_ids(tok) - {tok.unk_token_id})


def test_a_text_that_is_the_bos_string_keeps_its_token(spm_model):
    """tokenize's cut after the text found the text's tokens at the first match: for the
    text "<s>" that was the BOS the tokenizer adds, so the text's own token was cut off and
    the prompt had no features."""
    bos = spm_model.tokenizer.bos_token_id
    ids, offsets = spm_model.tokenize("<s>", add_special_tokens=True)
    assert ids == [bos, bos] and offsets == [(0, 0), (0, 3)]
    ids, offsets = spm_model.tokenize("hello <s>", add_special_tokens=True)
    assert ids[0] == bos and offsets[-1] == (6, 9)
    a = attrlens.explain("<s>", model=spm_model, chat=False, output=" the", method="loo")
    assert a.n_features == 1
