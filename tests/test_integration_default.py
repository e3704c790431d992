"""Integration tests on the embedded default model (SmolLM2-135M-Instruct GGUF)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import attrlens
from attrlens.models.hf import file_sha256, gguf_copy_dir

pytestmark = pytest.mark.integration


def test_france_is_a_top2_leave_one_out_feature(default_model):
    attr = attrlens.explain(
        "What is the capital of France? Answer with one word.", model=default_model, method="loo"
    )
    assert "Paris" in attr.output_text
    top2 = [lab for _, lab, _ in attr.top_k(2)]
    assert any(lab.startswith("France") for lab in top2), attr.top_k(5)
    # per-output-token LOO matrix: one row per feature, one column per output token
    assert attr.per_output_token.shape == (attr.n_features, len(default_model.tokenize(attr.output_text)[0]))
    assert attr.cost["value_calls"] == attr.n_features + 1


def test_provenance_and_dequantized_cache(default_model, tmp_path):
    from attrlens.models.default import default_gguf_path

    sha = file_sha256(default_gguf_path())
    assert default_model.info.sha256 == sha
    assert (gguf_copy_dir(sha) / "config.json").is_file()
    attr = attrlens.explain("Name a fruit.", model=default_model, method="loo", max_new_tokens=4)
    d = json.loads(attr.save(tmp_path / "r.json").read_text())
    assert d["model"]["sha256"] == sha and d["seed"] == 0
    assert d["params"]["granularity"] == "word" and d["params"]["target"]["target"] == "nll"


def test_chat_messages_with_system_prompt_and_kl_target(default_model):
    msgs = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "What colour is the sky on a clear day?"},
    ]
    attr = attrlens.explain(msgs, model=default_model, method="loo", target="kl",
                            granularity="word", max_new_tokens=6)
    assert attr.labels[0] == "What" and "answer" not in " ".join(attr.labels)
    assert np.all(attr.scores >= -1e-6)  # removing a word can only add divergence


def test_lime_same_seed_same_result(default_model):
    kw = {"model": default_model, "method": "lime", "budget": 24, "output": " Paris"}
    a = attrlens.explain("The capital of France is", seed=5, **kw)
    b = attrlens.explain("The capital of France is", seed=5, **kw)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-9)
    assert a.cost["value_calls"] <= 24
