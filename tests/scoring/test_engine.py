"""ScoringEngine: prefix reuse equals scoring from scratch; targets behave."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrlens.errors import InputError
from attrlens.scoring.engine import ScoringEngine, unmasked_input
from attrlens.scoring.targets import divergence, make_target
from attrlens.text.mask import Masker
from attrlens.text.prompt import build_prompt
from attrlens.text.segment import segment

PROMPT = "The quick brown fox jumps over the lazy dog. Explain why the sky is blue."


@pytest.fixture(scope="module")
def setup(tiny_model):
    pr = build_prompt(PROMPT, tiny_model)
    ids, offsets = tiny_model.tokenize(pr.text)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = tiny_model.tokenize(" Because of Rayleigh scattering.")[0]
    masks = np.random.default_rng(1).random((24, len(fs))) > 0.35
    masks[0] = True
    return tiny_model, np.asarray(ids), fs, np.asarray(out), masks


def _scratch(model, inp, out, L):
    """Reference: one full forward of the whole model per perturbed input."""
    seq = torch.as_tensor(np.concatenate([inp.ids, out]))[None]
    start = L if inp.output_start is None else inp.output_start
    pos = torch.as_tensor(np.concatenate([inp.positions, np.arange(start, start + len(out))]))[None]
    with torch.no_grad():
        lp = model.model(input_ids=seq, position_ids=pos, attention_mask=torch.ones_like(seq)).logits
    lp = lp.float().log_softmax(-1)[0]
    k = len(inp.ids)
    return np.array([lp[k - 1 + t, out[t]].item() for t in range(len(out))])


@pytest.mark.parametrize("kind", ["delete", "replace"])
def test_prefix_reuse_equals_scratch(setup, kind):
    model, ids, fs, out, masks = setup
    inputs = Masker(kind, ids, fs, mask_token_id=0).apply(masks)
    reuse = ScoringEngine(model, ids, out, prefix_reuse=True, max_batch_tokens=300)
    plain = ScoringEngine(model, ids, out, prefix_reuse=False)
    a = reuse.token_logprobs(inputs)
    b = plain.token_logprobs(inputs)
    ref = np.stack([_scratch(model, x, out, len(ids)) for x in inputs])
    np.testing.assert_allclose(a, ref, atol=1e-4)
    np.testing.assert_allclose(b, ref, atol=1e-4)
    # prefix reuse processes fewer tokens, and the masks change the scores
    assert reuse.counters["tokens_processed"] < plain.counters["tokens_processed"]
    assert reuse.counters["model_forwards"] > 1  # small token budget forces several batches
    assert np.ptp(a.sum(1)) > 1e-3


def test_batching_does_not_change_scores(setup):
    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(masks)
    big = ScoringEngine(model, ids, out, max_batch_tokens=100000).token_logprobs(inputs)
    small = ScoringEngine(model, ids, out, max_batch_tokens=60, max_logit_rows=7).token_logprobs(inputs)
    np.testing.assert_allclose(big, small, atol=1e-5)


@pytest.mark.parametrize("reducer", ["gather", "topk"])
def test_a_forward_of_the_prompt_alone_scores_nothing_and_fills_the_prefix(setup, reducer):
    """No input is unmasked and the budget leaves the prompt alone in the first forward (a
    long prompt under random coalitions): that forward only fills the prefix cache."""
    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(masks[1:])  # no unmasked row
    eng = ScoringEngine(model, ids, out, max_batch_tokens=1)  # one row per forward
    big = ScoringEngine(model, ids, out, max_batch_tokens=100000)
    if reducer == "gather":
        a, b = eng.token_logprobs(inputs), big.token_logprobs(inputs)
    else:
        a, b = eng.topk_distributions(inputs, 5)[0], big.topk_distributions(inputs, 5)[0]
    assert eng.counters["model_forwards"] == len(inputs) + 1  # the prompt's own forward
    assert eng.counters["rows_scored"] == len(inputs)
    np.testing.assert_allclose(a, b, atol=1e-5)
    ref = np.stack([_scratch(model, x, out, len(ids)) for x in inputs[:3]])
    if reducer == "gather":
        np.testing.assert_allclose(a[:3], ref, atol=1e-4)


def test_topk_distributions_are_sorted_logprobs(setup):
    model, ids, _fs, out, _ = setup
    eng = ScoringEngine(model, ids, out)
    vals, idx = eng.topk_distributions([unmasked_input(ids)], k=5)
    assert vals.shape == (1, len(out), 5) and idx.shape == (1, len(out), 5)
    assert np.all(np.diff(vals, axis=-1) <= 1e-7)
    assert np.all(np.exp(vals).sum(-1) <= 1 + 1e-6)


def test_targets_orientation_and_zero_divergence_when_unmasked(setup):
    model, ids, fs, out, masks = setup
    mk = Masker("delete", ids, fs)
    inputs = mk.apply(masks)
    eng = ScoringEngine(model, ids, out)
    lp = eng.token_logprobs(inputs)
    # later runs read the cached prefix and pack differently: float32 rounding only (1e-5)
    nll = make_target("nll", eng)
    np.testing.assert_allclose(nll.aggregate(nll.per_token(inputs)), lp.mean(1), atol=1e-5)
    tot = make_target("logprob", eng)
    np.testing.assert_allclose(tot.aggregate(tot.per_token(inputs)), lp.sum(1), atol=1e-5)
    for kind in ("kl", "js", "tv"):
        t = make_target(kind, eng, k=20)
        v = t.aggregate(t.per_token(inputs))
        assert abs(v[0]) < 1e-6  # row 0 is the unmasked prompt
        assert np.all(v <= 1e-6) and v.min() < -1e-4  # minus a divergence
        if kind == "tv":
            assert v.min() >= -1.0


def test_divergence_formulas():
    p = torch.tensor([[0.5, 0.5, 0.0]])
    q = torch.tensor([[0.25, 0.25, 0.5]])
    assert divergence(p, q, "kl").item() == pytest.approx(np.log(2), abs=1e-6)
    assert divergence(p, q, "tv").item() == pytest.approx(0.5, abs=1e-7)
    js = divergence(p, q, "js").item()
    assert js == pytest.approx(divergence(q, p, "js").item(), abs=1e-7)
    assert 0 < js <= np.log(2)


def test_contrastive_target(setup):
    model, ids, fs, out, masks = setup
    alt = np.asarray(model.tokenize(" The sky.")[0])
    e1, e2 = ScoringEngine(model, ids, out), ScoringEngine(model, ids, alt)
    inputs = Masker("delete", ids, fs).apply(masks[:4])
    t = make_target("contrastive", e1, alt_engine=e2)
    v = t.aggregate(t.per_token(inputs))
    expected = e1.token_logprobs(inputs).sum(1) - e2.token_logprobs(inputs).sum(1)
    np.testing.assert_allclose(v, expected, atol=1e-5)  # other packing: fp32 rounding


def test_bfloat16_model_scores_close_to_float32(setup):
    import copy

    from attrlens.models.hf import HFModel

    model, ids, fs, out, masks = setup
    bf = HFModel(copy.deepcopy(model.model).to(torch.bfloat16), model.tokenizer, info=model.info)
    inputs = Masker("delete", ids, fs).apply(masks[:6])
    a = ScoringEngine(model, ids, out).token_logprobs(inputs)
    b = ScoringEngine(bf, ids, out).token_logprobs(inputs)
    assert np.all(np.isfinite(b))
    np.testing.assert_allclose(b.mean(1), a.mean(1), atol=0.5)  # bf16 keeps ~3 significant digits


def test_answers_and_scores_up_to_the_end_of_a_learned_position_table() -> None:
    """A model with a learned position table (GPT-2: 32 positions here): generating past it
    and the engine's padding columns (positions counted on past the row's last token) both
    failed with "IndexError: index out of range in self". The answer now stops at the end of
    the context, and every method's scores equal those of the same weights with a longer
    table (the padding reads only itself, so its positions change nothing)."""
    from conftest import make_tiny_tokenizer
    from transformers import GPT2Config, GPT2LMHeadModel

    import attrlens

    tok = make_tiny_tokenizer()
    torch.manual_seed(0)
    short, long = (GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2,
                                              n_head=4, n_positions=n)).eval()
                   for n in (32, 64))
    state = short.state_dict()
    state["transformer.wpe.weight"] = torch.cat(
        [state["transformer.wpe.weight"], long.transformer.wpe.weight[32:].detach()])
    long.load_state_dict(state)
    prompt = " ".join(["word"] * 10)
    n_prompt = len(tok(prompt)["input_ids"])
    got = {}
    for method in ("loo", "gilot", "grad_x_input", "attention"):
        got[method] = attrlens.explain(prompt, model=short, tokenizer=tok, method=method,
                                       chat=False, max_new_tokens=40)
        out = got[method].output_text
        assert n_prompt + len(tok(out, add_special_tokens=False)["input_ids"]) == 32, method
        # (gilot explains its own beams, not a given output: the long model's beams of the
        # same length, which its first 32 positions make the same)
        given = ({"max_new_tokens": 32 - n_prompt} if method == "gilot" else {"output": out})
        ref = attrlens.explain(prompt, model=long, tokenizer=tok, method=method, chat=False,
                               **given)
        np.testing.assert_allclose(got[method].scores, ref.scores, rtol=1e-5, atol=1e-6,
                                   err_msg=method)


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_a_prompt_with_every_token_deleted_is_scored_from_the_empty_context_token(
        tiny_model, prefix_reuse):
    """delete with every prompt token masked left an empty sequence: its first output token
    was predicted from whatever column stood before it (another segment, the prefix), so the
    value changed with the batch (leave-one-out -3.94 where KernelSHAP and Banzhaf gave 0.32
    with n=1). It is scored from one BOS token at position 0, alone and in any batch."""
    model = tiny_model
    pr = build_prompt("Hello there friend", model, chat=False)
    ids, offsets = model.tokenize(pr.text)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = np.asarray(model.tokenize(" Because of Rayleigh scattering.")[0])
    ids = np.asarray(ids)
    assert model.empty_context_id == model.tokenizer.bos_token_id is not None
    mk = Masker("delete", ids, fs, empty_context_id=model.empty_context_id)
    masks = np.random.default_rng(3).random((9, len(fs))) > 0.4
    masks[0], masks[4] = True, False
    inputs = mk.apply(masks)
    assert inputs[4].ids.tolist() == [model.tokenizer.bos_token_id]
    batch = ScoringEngine(model, ids, out, prefix_reuse=prefix_reuse).token_logprobs(inputs)
    alone = ScoringEngine(model, ids, out, prefix_reuse=prefix_reuse).token_logprobs(
        [inputs[4]])
    ref = _scratch(model, inputs[4], out, len(ids))
    np.testing.assert_allclose(batch[4], ref, atol=1e-4)
    np.testing.assert_allclose(alone[0], ref, atol=1e-4)
    # without a token for the empty context such a mask is refused, not mis-scored
    with pytest.raises(InputError, match="removes every token of the prompt"):
        Masker("delete", ids, fs).apply(masks[4:5])


def test_leave_one_out_of_a_single_feature_matches_shapley_values(tiny_model):
    """With one feature LOO, KernelSHAP and Banzhaf are all v(all) - v(none)."""
    import attrlens

    got = {m: attrlens.explain("Hello", model=tiny_model, method=m, chat=False,
                               output=" world", masker="delete", target="logprob",
                               reduction="sum")
           for m in ("loo", "kernel_shap", "banzhaf")}
    for r in got.values():
        assert r.params["empty_context_id"] == tiny_model.tokenizer.bos_token_id
    np.testing.assert_allclose(got["loo"].scores, got["kernel_shap"].scores, atol=1e-5)
    np.testing.assert_allclose(got["loo"].scores, got["banzhaf"].scores, atol=1e-5)
