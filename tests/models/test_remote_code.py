"""A model directory that ships its own modeling code (``auto_map``, transformers'
``trust_remote_code``): refused on one line unless allowed (never an interactive prompt);
allowed, every method family runs on it and the scoring engine equals the model's own plain
forwards. Its attention is its own (not transformers' attention interface), so attention
methods read the model's ``output_attentions``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_tokenizer

import attrlens
from attrlens.errors import InputError
from attrlens.models.hf import load_model
from attrlens.scoring.engine import ScoringEngine
from attrlens.solvers.sampling import loo_masks
from attrlens.text.mask import Masker
from attrlens.text.prompt import build_prompt
from attrlens.text.segment import segment

CODE = Path(__file__).with_name("tinygpt_modeling.py")
PROMPT = "The quick brown fox jumps over the lazy dog. Explain why the sky is blue"
OUTPUT = " Because of Rayleigh scattering."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A saved tiny model whose config.json maps to the code copied beside it."""
    d = tmp_path_factory.mktemp("remote") / "tinygpt"
    d.mkdir()
    shutil.copy(CODE, d / "modeling_tinygpt.py")
    sys.path.insert(0, str(d))
    try:
        import modeling_tinygpt as m
    finally:
        sys.path.remove(str(d))
        sys.modules.pop("modeling_tinygpt", None)
    tok = make_tiny_tokenizer()
    torch.manual_seed(0)
    cfg = m.TinyGPTConfig(
        vocab_size=len(tok), tie_word_embeddings=False,
        auto_map={"AutoConfig": "modeling_tinygpt.TinyGPTConfig",
                  "AutoModelForCausalLM": "modeling_tinygpt.TinyGPTForCausalLM"})
    m.TinyGPTForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    assert "auto_map" in json.loads((d / "config.json").read_text())
    return d


def _scratch(hm, inp, out, L: int) -> np.ndarray:
    """log p(o_t) from one plain forward of the model's own code on a perturbed prompt (at
    the masker's positions)."""
    seq = torch.as_tensor(np.concatenate([inp.ids, out]))[None]
    start = L if inp.output_start is None else inp.output_start
    pos = torch.as_tensor(np.concatenate([inp.positions, np.arange(start, start + len(out))]))
    with torch.no_grad():
        lp = hm.model(input_ids=seq, position_ids=pos[None]).logits[0].float().log_softmax(-1)
    k = len(inp.ids)
    return np.array([lp[k - 1 + t, out[t]].item() for t in range(len(out))])


def test_refused_on_one_line_without_the_flag(model_dir) -> None:
    with pytest.raises(InputError, match=r"ships its own modeling or tokenizer code.*--trust-remote-code"):
        load_model(str(model_dir), device="cpu", dtype="float32")
    # the CLI: no interactive question (stdin closed), one line, exit code 2
    proc = subprocess.run(
        [sys.executable, "-m", "attrlens", "explain", "Hi there", "--model", str(model_dir),
         "--dtype", "float32", "--device", "cpu"],
        check=False, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stderr
    err = [ln for ln in proc.stderr.splitlines() if ln.startswith("attrlens: error:")]
    assert len(err) == 1 and "--trust-remote-code" in err[0], proc.stderr
    assert "Traceback" not in proc.stderr and "[y/N]" not in proc.stderr + proc.stdout


def test_allowed_it_scores_as_its_own_forwards(model_dir) -> None:
    hm = load_model(str(model_dir), device="cpu", dtype="float32", trust_remote_code=True)
    assert type(hm.model).__name__ == "TinyGPTForCausalLM"
    # a model loaded with the flag once is not handed to a later call without it
    with pytest.raises(InputError, match="ships its own modeling"):
        load_model(str(model_dir), device="cpu", dtype="float32")
    assert not hm.on_attention_interface and hm.packing == (True, True)
    pr = build_prompt(PROMPT, hm, chat=False)
    ids, offsets = hm.tokenize(pr.text, add_special_tokens=False)
    ids = np.asarray(ids)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = np.asarray(hm.tokenize(OUTPUT)[0])
    masks = np.concatenate([loo_masks(len(fs)),
                            np.random.default_rng(5).random((6, len(fs))) > 0.5])
    inputs = Masker("delete", ids, fs).apply(masks)
    ref = np.stack([_scratch(hm, x, out, len(ids)) for x in inputs])
    assert np.ptp(ref.sum(1)) > 0.05  # the perturbations matter
    # packed rows over the prefix cache its own code fills, and plain rows
    for kw in ({}, {"prefix_reuse": False}):
        got = ScoringEngine(hm, ids, out, **kw).token_logprobs(inputs)
        np.testing.assert_allclose(got, ref, atol=1e-4, err_msg=str(kw))
    # the same scores through the object route, and a hash that covers its code
    obj = attrlens.explain(PROMPT, model=hm.model, tokenizer=hm.tokenizer, method="loo",
                           output=OUTPUT, chat=False)
    via_path = attrlens.explain(PROMPT, model=hm, method="loo", output=OUTPUT, chat=False)
    np.testing.assert_allclose(obj.scores, via_path.scores, atol=1e-6)
    # (loo's default value: the mean log-prob of the output tokens)
    np.testing.assert_allclose(via_path.scores,
                               ref[0].mean() - ref[1: len(fs) + 1].mean(1), atol=1e-4)
    assert hm.info.sha256


@pytest.mark.parametrize("method", ["gilot", "kernel_shap", "spex", "grad_x_input", "ig",
                                    "attention", "attention_rollout", "bta"])
def test_every_method_family_runs_on_it(model_dir, method) -> None:
    hm = load_model(str(model_dir), device="cpu", dtype="float32", trust_remote_code=True)
    kw = {"budget": 64} if method == "kernel_shap" else {}
    if method != "gilot":  # (gilot explains its own beams)
        kw["output"] = OUTPUT
    a = attrlens.explain(PROMPT, model=hm, method=method, chat=False, seed=0, **kw)
    assert a.n_features > 5 and np.all(np.isfinite(a.scores))
    assert np.ptp(a.scores) > 1e-6


def test_the_hash_covers_its_code(model_dir, tmp_path) -> None:
    from attrlens.models.hf import _dir_sha256

    other = tmp_path / "copy"
    shutil.copytree(model_dir, other)
    assert _dir_sha256(other) == _dir_sha256(model_dir)
    code = other / "modeling_tinygpt.py"
    code.write_text(code.read_text() + "\n# changed\n")
    assert _dir_sha256(other) != _dir_sha256(model_dir)


def test_attention_weights_that_are_not_causal_probabilities_are_refused(
        model_dir, monkeypatch) -> None:
    """Code of its own may return something else as its attention weights: read from
    output_attentions, maps that are not causal probabilities are refused, not explained."""
    from attrlens.errors import CapabilityError

    hm = load_model(str(model_dir), device="cpu", dtype="float32", trust_remote_code=True)
    block = type(hm.model.transformer.blocks[0])
    forward = block.forward

    def transposed(self, x, bias, cache):
        y, w = forward(self, x, bias, cache)
        return y, w.transpose(-1, -2)

    monkeypatch.setattr(block, "forward", transposed)
    with pytest.raises(CapabilityError, match="not causal probabilities"):
        attrlens.explain(PROMPT, model=hm, method="attention", output=OUTPUT, chat=False)


ITEMS = [{"id": "fox", "prompt": "The quick brown fox jumps over the lazy dog.",
          "output": " A stitch in time"},
         {"id": "sky", "prompt": "Explain why the sky is blue.", "output": " Because of"}]


def test_evaluate_refuses_it_without_the_flag_and_runs_it_with(model_dir, tmp_path) -> None:
    from attrlens.models.hf import _dir_sha256

    kw = {"methods": ["loo"], "metrics": ["abpc"], "model": str(model_dir), "chat": False,
          "progress": False, "report": False}
    with pytest.raises(InputError, match="--trust-remote-code"):
        attrlens.evaluate(ITEMS, out=tmp_path / "no", **kw)
    s = attrlens.evaluate(ITEMS, out=tmp_path / "yes", trust_remote_code=True, **kw)
    assert s.table["loo"]["abpc"]["n"] == 2
    settings = json.loads((tmp_path / "yes" / "summary.json").read_text())["settings"]
    assert settings["model_sha256"] == _dir_sha256(model_dir)


def test_ray_load_arguments_carry_the_chat_template_kwargs(model_dir) -> None:
    from attrlens.evaluation.runner import _model_for_ray

    m = load_model(str(model_dir), trust_remote_code=True)
    spec = _model_for_ray(m.with_chat_template(enable_thinking=False))
    assert spec["path"] == str(model_dir) and spec["trust_remote_code"] is True
    assert spec["chat_template_kwargs"] == {"enable_thinking": False}
    assert _model_for_ray(m)["chat_template_kwargs"] is None


@pytest.mark.integration
def test_evaluate_on_ray_runs_it_in_the_actors(model_dir, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    kw = {"methods": ["loo"], "metrics": ["abpc"], "model": str(model_dir), "chat": False,
          "progress": False, "report": False, "trust_remote_code": True}
    local = attrlens.evaluate(ITEMS, out=tmp_path / "local", **kw)
    # (its classes cannot be sent to Ray's workers: each actor loads it from its directory,
    # whether evaluate got the directory or the loaded model)
    dist = attrlens.evaluate(ITEMS, out=tmp_path / "ray", backend="ray", workers=2, **kw)
    loaded = load_model(str(model_dir), trust_remote_code=True)
    again = attrlens.evaluate(ITEMS, out=tmp_path / "ray2", backend="ray", workers=2,
                              **{**kw, "model": loaded})
    assert again.table["loo"]["abpc"]["mean"] == pytest.approx(
        local.table["loo"]["abpc"]["mean"], rel=1e-6, abs=1e-9)
    assert not ray.is_initialized()
    assert dist.table["loo"]["abpc"]["n"] == 2
    assert dist.table["loo"]["abpc"]["mean"] == pytest.approx(
        local.table["loo"]["abpc"]["mean"], rel=1e-6, abs=1e-9)


def test_attention_weights_beyond_free_memory_are_refused(model_dir, monkeypatch) -> None:
    """output_attentions holds every layer's weights at once: a forward whose weights would
    take more than half the free memory is refused with the estimate, not run."""
    from attrlens.errors import CapabilityError
    from attrlens.models.hf import HFModel

    hm = load_model(str(model_dir), device="cpu", dtype="float32", trust_remote_code=True)
    free = hm.free_memory()
    assert free is not None and free > 2**20
    n = len(hm.tokenize(PROMPT)[0]) + len(hm.tokenize(OUTPUT)[0])
    need = 2 * 4 * n * n * 4  # layers x heads x S^2 x float32 (S: at least the tokens)
    monkeypatch.setattr(HFModel, "free_memory", lambda self: need)  # half of it is too little
    with pytest.raises(CapabilityError, match=r"GiB for them.*GiB is free"):
        attrlens.explain(PROMPT, model=hm, method="attention", output=OUTPUT, chat=False)
    monkeypatch.setattr(HFModel, "free_memory", lambda self: 100 * need)
    a = attrlens.explain(PROMPT, model=hm, method="attention", output=OUTPUT, chat=False)
    assert np.all(np.isfinite(a.scores))
