"""ScoringEngine at the limit: per-row prefixes, padding-aware batches, the read-only prefix
view, out-of-memory halving, and (integration) a 4,000-token prompt within 4 GB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from child_memory import OWN_PEAK_KB
from conftest import make_sliding_model, spy_sdpa

from attrlens.errors import CapabilityError
from attrlens.scoring.cache import PrefixCache
from attrlens.scoring.engine import ScoringEngine
from attrlens.solvers.sampling import loo_masks
from attrlens.text.mask import Masker
from attrlens.text.prompt import build_prompt
from attrlens.text.segment import segment

PROMPT = "The quick brown fox jumps over the lazy dog. Explain why the sky is blue"


@pytest.fixture(scope="module")
def setup(tiny_model):
    # raw text: the last prompt token belongs to a feature (attention_off keeps it, id 0)
    pr = build_prompt(PROMPT, tiny_model, chat=False)
    ids, offsets = tiny_model.tokenize(pr.text, add_special_tokens=False)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = np.asarray(tiny_model.tokenize(" Because of Rayleigh scattering.")[0])
    masks = np.concatenate([loo_masks(len(fs)), np.random.default_rng(5).random((8, len(fs))) > 0.5])
    return tiny_model, np.asarray(ids), fs, out, masks


def _scratch(model, inp, out, L):
    """Reference: one plain full forward per perturbed input (attention vector honoured)."""
    seq = np.concatenate([inp.ids, out])
    start = L if inp.output_start is None else inp.output_start
    pos = np.concatenate([inp.positions, np.arange(start, start + len(out))])
    att = np.ones(len(seq), dtype=np.int64)
    if inp.attention is not None:
        att[: len(inp.ids)] = inp.attention
    with torch.no_grad():
        logits = model.model(
            input_ids=torch.as_tensor(seq)[None], position_ids=torch.as_tensor(pos)[None],
            attention_mask=torch.as_tensor(att)[None],
        ).logits[0]
    lp = logits.float().log_softmax(-1)
    k = len(inp.ids)
    return np.array([lp[k - 1 + t, out[t]].item() for t in range(len(out))])


@pytest.mark.parametrize("kind", ["delete", "replace", "attention_off"])
@pytest.mark.parametrize("one_batch", [True, False])
def test_per_row_prefixes_equal_scratch(setup, kind, one_batch):
    """Every row reuses the prompt up to its own first change, also when rows with very
    different cuts share one packed forward; scores equal plain forwards to 1e-4."""
    model, ids, fs, out, masks = setup
    inputs = Masker(kind, ids, fs, mask_token_id=0).apply(masks)
    opts = {"max_batch_tokens": 10**6} if one_batch else {"max_batch_tokens": 120}
    eng = ScoringEngine(model, ids, out, **opts)
    got = eng.token_logprobs(inputs)
    ref = np.stack([_scratch(model, x, out, len(ids)) for x in inputs])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    L, T = len(ids), len(out)
    assert inputs[0].first_change == L  # row 0 is the unmasked prompt
    cuts = [min(x.first_change, len(x.ids) - 1, L - 1) for x in inputs[1:]]
    per_row = sum(len(x.ids) - c + T for x, c in zip(inputs[1:], cuts))
    # the unmasked prompt with the output (it scores row 0 and is the others' prefix) + each
    # other row's own suffix: nothing recomputed per batch, no separate prefix pass
    assert eng.counters["tokens_processed"] == L + T + per_row
    assert eng.counters["rows_scored"] == len(inputs)
    if one_batch:
        assert eng.counters["model_forwards"] == 1
    else:  # 120 tokens per forward at most
        assert eng.counters["model_forwards"] >= eng.counters["tokens_processed"] / 120 > 2
    assert np.ptp(got.sum(1)) > 1e-3
    # a second run reads the cached prefix: row 0 is then a one-token suffix
    again = eng.token_logprobs(inputs)
    np.testing.assert_allclose(again, got, atol=1e-4)


def test_packing_shares_rows_and_respects_limits(setup):
    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(masks)
    n = len(inputs)
    # attention free in the planner's model: one long row, segments back to back, no padding
    one = ScoringEngine(model, ids, out, pack_tokens=10**5, max_batch_tokens=10**5,
                        attention_cost=0.0)
    a = one.token_logprobs(inputs)
    assert one.counters["model_forwards"] == 1 and one.counters["padded_tokens"] == 0
    # attention dear: rows as long as the widest segment, a little padding
    tight = ScoringEngine(model, ids, out, pack_tokens=1, max_batch_tokens=10**5,
                          attention_cost=1.0)
    b = tight.token_logprobs(inputs)
    widest = len(ids) + len(out)
    assert tight.counters["model_forwards"] == 1
    assert 0 < tight.counters["padded_tokens"] < n * widest // 2
    np.testing.assert_allclose(a, b, atol=1e-5)
    # the limits hold: segments per forward, tokens per forward
    capped = ScoringEngine(model, ids, out, max_batch_size=5)
    np.testing.assert_allclose(capped.token_logprobs(inputs), a, atol=1e-5)
    assert capped.counters["model_forwards"] == -(-n // 5)
    small = ScoringEngine(model, ids, out, max_batch_tokens=widest, pack_tokens=1)
    np.testing.assert_allclose(small.token_logprobs(inputs), a, atol=1e-5)
    assert small.counters["model_forwards"] >= n // 2


def test_planner_keeps_segments_apart_when_attention_dominates(setup):
    """When attention dominates the modelled cost and the key-column budget keeps forwards
    to about one row (long prompts), each row holds one segment, so no query scores prefix
    columns or row keys it does not need; when attention is free, narrow segments share
    rows. Scores are the same either way."""
    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(masks)
    rows_seen: dict[float, list[int]] = {}
    got = {}
    budget = 2 * (len(ids) + len(out))
    for cost in (0.0, 10.0):
        eng = ScoringEngine(model, ids, out, attention_cost=cost, max_batch_tokens=budget)
        real = eng._run_forward

        def spy(rows, *args, _real=real, _cost=cost, **kw):
            rows_seen.setdefault(_cost, []).extend(len(r) for r in rows)
            return _real(rows, *args, **kw)

        eng._run_forward = spy
        got[cost] = eng.token_logprobs(inputs)
    assert set(rows_seen[10.0]) == {1}
    assert max(rows_seen[0.0]) > 1
    np.testing.assert_allclose(got[10.0], got[0.0], atol=1e-4)


def test_query_reading_no_key_scores_the_same_in_any_row(setup):
    """attention_off with every feature masked: the last prompt token (which predicts the
    first output token) reads no key at all. Its score is the same alone as packed with
    other segments (a zero attention output, whatever the row holds), and equals a plain
    forward."""
    model, ids, fs, out, _masks = setup
    n = len(fs)
    masks = np.ones((6, n), dtype=bool)
    masks[0] = False  # everything masked
    masks[1:, np.arange(1, 6) % n] = False
    inputs = Masker("attention_off", ids, fs, mask_token_id=0).apply(masks)
    alone = ScoringEngine(model, ids, out).token_logprobs(inputs[:1])
    packed = ScoringEngine(model, ids, out, pack_tokens=10**4).token_logprobs(inputs)
    np.testing.assert_allclose(packed[0], alone[0], atol=1e-5)
    np.testing.assert_allclose(alone[0], _scratch(model, inputs[0], out, len(ids)), atol=1e-4)


def test_packed_masks_hold_under_eager_attention(setup):
    """A model with eager attention (which adds the mask to its scores) gets the same
    scores as plain forwards: the packed mask is additive, not boolean."""
    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(masks[:6])
    mdl = model.model
    old = mdl.config._attn_implementation
    mdl.set_attn_implementation("eager")
    try:
        got = ScoringEngine(model, ids, out).token_logprobs(inputs)
        ref = np.stack([_scratch(model, x, out, len(ids)) for x in inputs])
    finally:
        mdl.set_attn_implementation(old)
    np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("budget", [150, 400])
def test_forwards_hold_at_most_max_batch_tokens_key_columns(setup, budget):
    """Each forward of several rows holds at most ``max_batch_tokens`` key columns: rows x
    (shared-prefix columns + row length), as a from-scratch forward of that many tokens."""
    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(masks)
    want = ScoringEngine(model, ids, out, prefix_reuse=False).token_logprobs(inputs)
    eng = ScoringEngine(model, ids, out, max_batch_tokens=budget)
    eng.token_logprobs(inputs[:1])  # the prefix is cached: every forward reads it
    dec = model.decoder
    real = dec.forward
    columns: list[tuple[int, int]] = []

    def spy(*args, **kwargs):
        B, _one, _S, K = kwargs["attention_mask"].shape
        columns.append((B, K))
        return real(*args, **kwargs)

    dec.forward = spy
    try:
        got = eng.token_logprobs(inputs)
    finally:
        del dec.forward
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert all(B * K <= budget or B == 1 for B, K in columns)
    assert max(K for _B, K in columns) > len(out) + 1  # the prefix columns are counted
    assert any(B > 1 for B, _K in columns) == (budget > 300)  # rows share forwards if they fit


def test_prefix_view_keeps_no_per_row_copy(tiny_model, setup):
    _model, ids, _fs, _out, _ = setup
    pc = PrefixCache(tiny_model, ids)
    cache = pc.attend(16, 7)
    lay = cache.layers[0]
    k_new = torch.zeros(16, lay.keys.shape[1], 3, lay.keys.shape[3])
    k, _v = lay.update(k_new, k_new.clone())
    assert k.shape[0] == 16 and k.shape[2] == 10
    # the shared prefix stays one row and p positions: the batch's keys are not kept
    assert lay.keys.shape[0] == 1 and lay.keys.shape[2] == 7
    assert cache.get_seq_length() == 7
    with pytest.raises(ValueError):
        pc.attend(2, len(ids) + 1)


def _oom_error():
    return getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def test_out_of_memory_halves_the_batch_and_retries(setup, monkeypatch):
    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(masks)
    want = ScoringEngine(model, ids, out).token_logprobs(inputs)
    dec = model.decoder
    real = dec.forward
    calls: list[int] = []

    def flaky(*args, **kwargs):
        calls.append(int(kwargs["input_ids"].numel()))
        if len(calls) == 1:  # the first forward (all rows): OOM once
            raise _oom_error()("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(dec, "forward", flaky)
    eng = ScoringEngine(model, ids, out)
    got = eng.token_logprobs(inputs)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert eng.counters["oom_retries"] == 1
    n = len(inputs)
    # all n segments failed once, then its halves ran, in forwards of at most half its key
    # columns (packed: fewer tokens each)
    assert len(calls) >= 3 and all(c < calls[0] for c in calls[1:])
    assert eng.counters["model_forwards"] == len(calls) - 1
    assert eng.max_batch_size == n // 2  # later runs start at the size that fitted
    assert eng.counters["rows_scored"] == n


def test_out_of_memory_on_one_row_is_a_clear_error(setup, monkeypatch):
    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(masks[:3])
    dec = model.decoder
    real = dec.forward

    def always(*args, **kwargs):
        if model.cache_kwarg in kwargs:  # every batch (not the prefix pass) runs out
            raise _oom_error()("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(dec, "forward", always)
    eng = ScoringEngine(model, ids, out)
    with pytest.raises(CapabilityError, match="does not fit"):
        eng.token_logprobs(inputs)
    assert eng.counters["oom_retries"] >= 1


def _long_text(n_sentences: int) -> str:
    words = ["river", "valley", "stone", "bridge", "farmer", "mill", "water", "summer",
             "winter", "engineer", "fish", "ladder", "town", "bank", "current", "flood",
             "soil", "dam", "heron", "path"]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_sentences):
        w = rng.choice(words, size=14)
        out.append(f"Sentence {i} says the " + " ".join(w) + ".")
    return " ".join(out)


CHILD = OWN_PEAK_KB + textwrap.dedent(
    """
    import json, sys, time
    import torch
    torch.set_num_threads(int(sys.argv[2]))
    import attrlens
    text = open(sys.argv[1]).read()
    first = text.index(".") + 1
    last = text.rindex(". ") + 2
    model = attrlens.load_model(dtype="float32")
    t0 = time.perf_counter()
    # sentence features of the first and the last sentence (everything else frozen): the
    # first one's LOO row re-runs the whole 4,000-token prompt from scratch (the worst row)
    res = attrlens.explain(text, model=model, method="loo", granularity="span",
                           spans=[(0, first), (last, len(text))], output=" The river.",
                           chat=False)
    n_tok = len(model.tokenize(text)[0])
    print(json.dumps({"tokens": n_tok, "wall_s": time.perf_counter() - t0,
                      "scores": [float(s) for s in res.scores], "cost": res.cost,
                      "peak_kb": own_peak_kb()}))
    """
)


@pytest.mark.integration
def test_4000_token_prompt_explains_within_4_gb(tmp_path):
    """A 4,000-token prompt: the prefix cache, and the LOO row that changes the first
    sentence (a full from-scratch forward of ~4,000 tokens), in a subprocess whose own peak
    resident memory (its VmHWM, tests/child_memory.py) stays under 4 GB. The sentence-feature
    LOO of such a prompt (every 10th row) is timed by ``benchmarks/scoring.py --prompts 4k``."""
    text_file = tmp_path / "long.txt"
    text_file.write_text(_long_text(180))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    proc = subprocess.run(
        [sys.executable, str(script), str(text_file), env["OMP_NUM_THREADS"]],
        capture_output=True, text=True, timeout=900, env=env, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    # the child's own peak (tests/child_memory.py: its ru_maxrss would carry the suite's)
    peak_kb = res["peak_kb"]
    assert peak_kb > 300 * 2**10
    assert 3800 <= res["tokens"] <= 4600, res["tokens"]
    assert all(np.isfinite(res["scores"])) and len(res["scores"]) == 2
    print(f"4000-token prompt: {res['tokens']} tokens, peak RSS {peak_kb / 2**20:.2f} GB, "
          f"explain wall {res['wall_s']:.0f} s, cost {res['cost']}")
    assert peak_kb < 4 * 2**20, f"peak RSS {peak_kb / 2**20:.2f} GB"


@pytest.mark.parametrize("kind", ["mistral", "qwen2"])
def test_sliding_window_models_equal_scratch(setup, kind):
    """Packed segments keep a sliding window by index in their own sequence (Mistral: all
    layers; Qwen2: one mask per kind of layer) and equal plain forwards."""
    _model, ids, fs, out, masks = setup
    model = make_sliding_model(kind)
    assert model.packing == (True, True)  # the packed path, not plain rows
    cfg = model.model.config
    if kind == "qwen2":
        assert set(cfg.layer_types) == {"full_attention", "sliding_attention"}
    inputs = Masker("delete", ids, fs).apply(masks)
    got = ScoringEngine(model, ids, out).token_logprobs(inputs)
    ref = np.stack([_scratch(model, x, out, len(ids)) for x in inputs])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # the window matters here: without it the scores differ
    cfg.sliding_window = 10**6
    wide = ScoringEngine(model, ids, out).token_logprobs(inputs)
    cfg.sliding_window = 5
    assert np.abs(wide - ref).max() > 1e-3


def test_packed_attention_runs_grouped_query_sdpa_and_restores_the_model(setup, monkeypatch):
    """On CPU, under the engine's mask, the decoder's SDPA layers run attrlens' grouped-query
    function (keys and values stay at their own head count, not copied per query head), with
    the same scores as transformers' own SDPA; the model's attention implementation is sdpa
    again afterwards, also when a forward fails."""
    from attrlens.models import hf

    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(masks)
    with monkeypatch.context() as m:
        m.setattr(hf, "_gqa_sdpa", lambda: False)  # transformers' own SDPA
        want = ScoringEngine(model, ids, out, pack_tokens=10**4).token_logprobs(inputs)
    heads: list[tuple[int, int]] = []
    real = hf._packed_sdpa

    def spy(module, query, key, *args, **kwargs):
        heads.append((query.shape[1], key.shape[1]))
        return real(module, query, key, *args, **kwargs)

    monkeypatch.setattr(hf, "_packed_sdpa", spy)
    got = ScoringEngine(model, ids, out, pack_tokens=10**4).token_logprobs(inputs)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert heads and all(k < q for q, k in heads)  # 4 query heads read 2 key/value heads
    assert model.decoder.config._attn_implementation == "sdpa"

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(hf, "_packed_sdpa", fail)
    with pytest.raises(RuntimeError, match="boom"):
        ScoringEngine(model, ids, out).token_logprobs(inputs[:3])
    assert model.decoder.config._attn_implementation == "sdpa"


def test_cpu_gqa_probe_matches_the_kernel_torch_runs():
    """``cpu_gqa_flash`` says whether this torch's CPU SDPA runs ``enable_gqa`` in its flash
    kernel (torch 2.13: yes; 2.6: no, the math path): checked against the profiled op."""
    from attrlens.models.hf import cpu_gqa_flash

    q, k = torch.randn(1, 4, 16, 8), torch.randn(1, 2, 16, 8)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, k, k, is_causal=True,
                                                         enable_gqa=True)
    ops = {e.key for e in prof.key_averages()}
    assert ("aten::_scaled_dot_product_flash_attention_for_cpu" in ops) == cpu_gqa_flash()


def test_without_cpu_gqa_flash_keys_are_copied_not_sent_to_the_math_path(setup, monkeypatch):
    """Where the CPU flash kernel has no grouped-query attention, the packed attention never
    passes ``enable_gqa`` (torch would run the math path, which keeps every score map): the
    mask-free forwards get keys and values copied per query head, masked ones go to
    transformers' SDPA (which copies them); scores equal those with GQA."""
    from attrlens.models import hf

    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(masks)
    monkeypatch.setattr(hf, "_CPU_GQA_FLASH", [True])
    want = ScoringEngine(model, ids, out).token_logprobs(inputs)
    monkeypatch.setattr(hf, "_CPU_GQA_FLASH", [False])
    calls = spy_sdpa(monkeypatch)
    got = ScoringEngine(model, ids, out).token_logprobs(inputs)  # masked packed rows
    one = ScoringEngine(model, ids, out).token_logprobs(inputs[:1])  # one sequence, no mask
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(one, want[:1], atol=1e-5)
    assert len(calls) >= 2 * len(model.layers())
    assert all(q == k and not gqa for q, k, gqa in calls)


@pytest.mark.parametrize("kind", ["delete", "replace"])
@pytest.mark.parametrize(("prefix_reuse", "split"), [(True, True), (True, False),
                                                     (False, True)])
def test_one_sequence_forwards_need_no_mask(setup, monkeypatch, kind, prefix_reuse, split):
    """A forward of one sequence is made without a mask: the packed attention reads the
    prefix up to the sequence's cut and the sequence itself causally, by one square causal
    call when the prefix is shorter than the sequence and, when not, by two flash calls
    merged by their log-sum-exps (``split``; a mask made in the layer without it). Scores
    equal plain forwards, and both cases occur."""
    from attrlens.models import hf

    model, ids, fs, out, masks = setup
    inputs = Masker(kind, ids, fs, mask_token_id=0).apply(masks)
    seen: list[tuple[bool, int, int]] = []  # (no mask, queries, keys) per layer call
    real, real_split = hf._packed_sdpa, hf._prefix_then_causal
    splits: list[int] = []

    def spy(module, query, key, value, attention_mask, *args, **kwargs):
        seen.append((attention_mask is None, query.shape[2], key.shape[2]))
        return real(module, query, key, value, attention_mask, *args, **kwargs)

    def spy_split(query, key, *args):
        out_ = real_split(query, key, *args)
        splits.append(out_ is not None)
        return out_

    monkeypatch.setattr(hf, "_packed_sdpa", spy)
    monkeypatch.setattr(hf, "_prefix_then_causal", spy_split)
    monkeypatch.setattr(hf, "SPLIT_PREFIX_ATTENTION", split)
    eng = ScoringEngine(model, ids, out, max_batch_size=1, prefix_reuse=prefix_reuse)
    got = eng.token_logprobs(inputs)
    ref = np.stack([_scratch(model, x, out, len(ids)) for x in inputs])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    assert eng.counters["model_forwards"] == len(inputs)  # one sequence each
    assert seen and all(none for none, _q, _k in seen)
    prefix = [(k - q, q) for _none, q, k in seen]  # (prefix keys, queries)
    if prefix_reuse:
        assert any(0 < p < q for p, q in prefix) and any(p >= q for p, q in prefix)
    else:
        assert {p for p, _q in prefix} == {0}
    # the split runs exactly for the layer calls whose prefix is at least the queries
    n_split = sum(q > 1 and p >= q for p, q in prefix) if split else 0
    assert splits == [True] * n_split


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("heads", "kv_heads"), [(4, 4), (6, 2)])
@pytest.mark.parametrize(("q_len", "k"), [(5, 5), (3, 40), (2, 2)])
def test_prefix_then_causal_equals_masked_attention(dtype, heads, kv_heads, q_len, k):
    from attrlens.models.hf import _prefix_then_causal

    g = torch.Generator().manual_seed(q_len * 100 + k)
    q = torch.randn(2, heads, q_len, 16, generator=g).to(dtype)
    key = torch.randn(2, kv_heads, k + q_len, 16, generator=g).to(dtype)
    val = torch.randn(2, kv_heads, k + q_len, 16, generator=g).to(dtype)
    groups = heads // kv_heads
    got = _prefix_then_causal(q, key, val, k, groups, 0.3)
    mask = torch.ones(q_len, q_len + k, dtype=torch.bool).tril(k)
    rep = [t.float().repeat_interleave(groups, 1) for t in (key, val)]
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), *rep, attn_mask=mask,
                                                            scale=0.3)
    assert got is not None and got.dtype == dtype and got.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got.float(), want, atol=tol, rtol=tol)


def test_other_forwards_of_the_model_during_packed_attention_are_unchanged(setup):
    """While one block runs packed attention, a forward of the same model in another thread
    (a left-padded batch with its own 2-D mask) gets transformers' SDPA, masks included; nested
    blocks leave the model packed until the last one ends, then sdpa again."""
    import threading

    model, ids, _fs, _out, _masks = setup
    x = torch.as_tensor(np.stack([ids, np.concatenate([np.zeros(3, np.int64), ids[3:]])]))
    att = torch.ones_like(x)
    att[1, :3] = 0  # left padding: no real token may read it

    def plain():
        with torch.inference_mode():
            return model.model(input_ids=x, attention_mask=att).logits

    want = plain()
    got: dict[str, torch.Tensor] = {}
    cfg = model.decoder.config
    with model.packed_attention():
        with model.packed_attention():
            assert cfg._attn_implementation != "sdpa"
        assert cfg._attn_implementation != "sdpa"  # the outer block is still running
        t = threading.Thread(target=lambda: got.setdefault("x", plain()))
        t.start()
        t.join()
    assert cfg._attn_implementation == "sdpa"
    torch.testing.assert_close(got["x"][0], want[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["x"][1, 3:], want[1, 3:], atol=1e-5, rtol=1e-5)


def test_out_of_memory_resizes_the_forwards_after_the_failed_one(setup, monkeypatch):
    """One out-of-memory error sizes every later forward: a job planned as one huge forward,
    on a device that holds a quarter of it, fails three times (the whole, its first half,
    that one's first half), not again for each forward planned before the first failure."""
    model, ids, fs, out, masks = setup
    inputs = Masker("delete", ids, fs).apply(np.concatenate([masks] * 8))
    want = ScoringEngine(model, ids, out).token_logprobs(inputs)
    dec = model.decoder
    real = dec.forward
    calls: list[tuple[int, bool]] = []
    limit: list[int | None] = [None]

    def holds(*args, **kwargs):
        n = int(kwargs["input_ids"].numel())
        fits = limit[0] is None or n <= limit[0]
        calls.append((n, fits))
        if not fits:
            raise _oom_error()("CUDA out of memory (injected)")
        return real(*args, **kwargs)

    def huge():
        return ScoringEngine(model, ids, out, max_batch_tokens=10**8, max_batch_size=10**6,
                             pack_tokens=64)

    monkeypatch.setattr(dec, "forward", holds)
    huge().token_logprobs(inputs)
    whole = max(n for n, _ok in calls)
    assert [n for n, _ok in calls].count(whole) == 1  # one forward holds the job
    limit[0], calls[:] = whole // 4, []
    eng = huge()
    np.testing.assert_allclose(eng.token_logprobs(inputs), want, atol=1e-5)
    assert eng.counters["oom_retries"] == sum(not ok for _n, ok in calls) == 3
    assert eng.counters["rows_scored"] == len(inputs)
