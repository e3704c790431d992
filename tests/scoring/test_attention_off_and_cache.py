"""attention_off scoring equals zeroing the attention (and id) of masked positions, the
last prompt token included; one prefix cache serves the engine and the beam runner."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attrlens.scoring.beams import BeamRunner, unmasked_inputs
from attrlens.scoring.cache import PrefixCache
from attrlens.scoring.distributions import divergence, topk_divergence, topk_union
from attrlens.scoring.engine import ScoringEngine
from attrlens.text.mask import Masker
from attrlens.text.prompt import build_prompt
from attrlens.text.segment import segment

PROMPT = "The quick brown fox jumps over the lazy dog. Explain why the sky is blue"


@pytest.fixture(scope="module")
def raw(tiny_model):
    # raw text (no chat template): the last prompt token belongs to a feature
    pr = build_prompt(PROMPT, tiny_model, chat=False)
    ids, offsets = tiny_model.tokenize(pr.text, add_special_tokens=False)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = np.asarray(tiny_model.tokenize(" Because of Rayleigh scattering.")[0])
    return np.asarray(ids), fs, out


def _attention_mask_reference(model, ids, keep, out):
    """From scratch: full-length prompt with id 0 and attention 0 at masked positions."""
    L = len(ids)
    seq = np.concatenate([np.where(keep, ids, 0), out])
    att = np.concatenate([keep, np.ones(len(out), dtype=bool)]).astype(np.int64)
    with torch.no_grad():
        logits = model.model(
            input_ids=torch.as_tensor(seq)[None], attention_mask=torch.as_tensor(att)[None],
            position_ids=torch.arange(len(seq))[None],
        ).logits[0]
    lp = logits.float().log_softmax(-1)
    return np.array([lp[L - 1 + t, out[t]].item() for t in range(len(out))])


@pytest.mark.parametrize("prefix_reuse", [True, False])
def test_attention_off_equals_zeroed_attention_also_for_the_last_token(
    tiny_model, raw, prefix_reuse
):
    ids, fs, out = raw
    n = len(fs)
    masks = np.random.default_rng(3).random((10, n)) > 0.4
    masks[0] = True
    masks[1:6, -1] = False  # the last word (so the last prompt token) masked
    masks[6] = True
    masks[6, 2] = False  # a middle word only
    mk = Masker("attention_off", ids, fs)
    keep = mk.token_keep(masks)
    assert not keep[1:6, -1].any()
    eng = ScoringEngine(tiny_model, ids, out, prefix_reuse=prefix_reuse, max_batch_tokens=200)
    got = eng.token_logprobs(mk.apply(masks))
    ref = np.stack([_attention_mask_reference(tiny_model, ids, k, out) for k in keep])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # with the last token masked, attention_off is not a deletion
    dele = ScoringEngine(tiny_model, ids, out).token_logprobs(
        Masker("delete", ids, fs).apply(masks))
    assert np.abs(dele[1:6] - got[1:6]).max() > 1e-2
    np.testing.assert_allclose(dele[[0, 6]], got[[0, 6]], atol=1e-4)


def test_one_prefix_cache_serves_engine_and_beam_runner(tiny_model, raw):
    ids, fs, out = raw
    cache = PrefixCache(tiny_model, ids)
    eng = ScoringEngine(tiny_model, ids, out, prefix=cache)
    masks = np.ones((3, len(fs)), dtype=bool)
    masks[1, 3] = masks[2, 5] = False
    eng.token_logprobs(Masker("delete", ids, fs).apply(masks))
    # the prompt's keys were computed in passing, in the engine's one forward
    assert cache.ready and eng.counters["model_forwards"] == 1
    runner = BeamRunner(tiny_model, ids, beams=2, horizon=3, prefix=cache)
    ((_, marg),) = list(runner.search(unmasked_inputs(ids)))
    # the unmasked beam search reads the shared cache: no prompt pass, J - 1 decoding steps
    assert runner.counters["model_forwards"] == 2
    own = BeamRunner(tiny_model, ids, beams=2, horizon=3)
    ((_, marg2),) = list(own.search(unmasked_inputs(ids)))
    assert own.counters["model_forwards"] == 3
    # the shared keys came from a packed forward: float32 rounding only
    np.testing.assert_allclose(marg.logp.numpy(), marg2.logp.numpy(), atol=1e-5)
    with pytest.raises(ValueError):
        ScoringEngine(tiny_model, ids[:-1], out, prefix=cache)


def test_topk_divergence_equals_the_masked_full_vocabulary_form():
    rng = np.random.default_rng(0)
    lp = torch.log_softmax(torch.as_tensor(rng.normal(size=(2, 4, 30)) * 2), -1)
    for kind in ("kl", "js", "tv"):
        got = topk_divergence(lp[0], lp[1], kind, top_k=5)
        for r in range(4):
            sel = set(lp[0, r].topk(5).indices.tolist()) | set(lp[1, r].topk(5).indices.tolist())
            sel = sorted(sel)
            p, q = lp[0, r, sel].exp(), lp[1, r, sel].exp()
            want = divergence((p / p.sum())[None], (q / q.sum())[None], kind)[0]
            assert float(got[r]) == pytest.approx(float(want), abs=1e-9)
    _ids, p, q, valid = topk_union(lp[0], lp[0], top_k=5)
    assert int(valid.sum(-1).max()) == 5  # identical rows: the union is one top-k


def test_generation_reads_only_the_tokens_attention_off_keeps(tiny_model, raw):
    """Regeneration from an attention_off perturbation: its masked last token is id 0 with
    attention 0, which generate (ids only) read as a real token; the kept tokens are the
    input, as with delete, and a mask of everything is the empty context."""
    ids, fs, _ = raw
    n = len(fs)
    masks = np.ones((4, n), dtype=bool)
    masks[1, -1] = False  # the last word: the appended id 0
    masks[2, 2] = False
    masks[3] = False
    off, dele = (Masker(kind, ids, fs, empty_context_id=5) for kind in ("attention_off",
                                                                         "delete"))
    keep = off.token_keep(masks)
    assert 0 in off.apply(masks)[1].ids  # the scoring input does carry it
    for i, (p_off, p_del) in enumerate(zip(off.apply(masks), dele.apply(masks))):
        got = off.generation_ids(p_off)
        np.testing.assert_array_equal(got, dele.generation_ids(p_del))
        if i < 3:
            np.testing.assert_array_equal(got, ids[keep[i]])
    assert off.generation_ids(off.apply(masks)[3]).tolist() == [5]  # the empty context
