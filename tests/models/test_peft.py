"""PEFT adapters: a PeftModel object explains as its merged weights do, and an adapter
directory loads onto its local base model, merged."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import hub_snapshot, make_tiny_model, save_model_dir

import attrlens
from attrlens.errors import CapabilityError, InputError
from attrlens.models.hf import load_model, wrap_model

peft = pytest.importorskip("peft", reason="the PEFT tests need attrlens[peft] (make installs it)")

PROMPT = "The quick brown fox jumps over the lazy dog. A stitch in time saves nine."
OUTPUT = " Because of Rayleigh scattering."


@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model(seed=3)


@pytest.fixture(scope="module")
def lora(tiny):
    """The tiny model with a LoRA adapter of random (non-zero) weights on q, v and up."""
    import torch

    cfg = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                          init_lora_weights=False)
    torch.manual_seed(7)
    return peft.get_peft_model(copy.deepcopy(tiny.model), cfg).eval()


@pytest.fixture(scope="module")
def dirs(tiny, lora, tmp_path_factory):
    base = save_model_dir(tiny, tmp_path_factory.mktemp("base"))
    adapter = tmp_path_factory.mktemp("adapter")
    lora.save_pretrained(adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    return base, adapter


def _scores(model, method: str, **kw) -> np.ndarray:
    given = {} if method == "gilot" else {"output": OUTPUT}  # (gilot: its own beams)
    res = attrlens.explain(PROMPT, model=model, method=method, chat=False, **given, **kw)
    return np.asarray(res.scores, dtype=np.float64)


@pytest.mark.parametrize("method", ["loo", "ig", "attention", "gilot"])
def test_peft_object_explains_as_its_merged_weights(tiny, lora, method) -> None:
    merged = copy.deepcopy(lora).merge_and_unload()
    a = _scores(lora, method, tokenizer=tiny.tokenizer)
    b = _scores(merged, method, tokenizer=tiny.tokenizer)
    base = _scores(tiny.model, method, tokenizer=tiny.tokenizer)
    np.testing.assert_allclose(a, b, atol=1e-4 if method == "ig" else 1e-5, rtol=0)
    assert np.abs(a - base).max() > 1e-2  # the adapter changes the answer's attributions


def test_peft_object_is_recorded_as_adapted(tiny, lora) -> None:
    res = attrlens.explain(PROMPT, model=lora, tokenizer=tiny.tokenizer, method="loo",
                           output=OUTPUT, chat=False)
    base = attrlens.explain(PROMPT, model=tiny.model, tokenizer=tiny.tokenizer, method="loo",
                            output=OUTPUT, chat=False)
    assert res.model["id"] == base.model["id"] + "+lora:default"


def test_adapter_directory_loads_merged_onto_its_base(tiny, lora, dirs, monkeypatch,
                                                      tmp_path) -> None:
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(tmp_path))
    base, adapter = dirs
    m = load_model(adapter, device="cpu", dtype="float32")
    assert type(m.model).__name__ == "LlamaForCausalLM"  # merged, no PEFT wrapper left
    assert m.info.id == str(adapter)
    assert m.info.sha256 != load_model(base, device="cpu", dtype="float32").info.sha256
    np.testing.assert_allclose(_scores(m, "loo"), _scores(lora, "loo", tokenizer=tiny.tokenizer),
                               atol=1e-5, rtol=0)
    # the CLI takes the same directory as --model
    from attrlens.cli import main

    out = tmp_path / "r.json"
    assert main(["explain", PROMPT, "--model", str(adapter), "--method", "loo",
                 "--output-text", OUTPUT, "--raw", "--json", str(out), "--dtype", "float32",
                 "--quiet"]) == 0
    np.testing.assert_allclose(json.loads(out.read_text())["scores"], _scores(m, "loo"),
                               atol=1e-5, rtol=0)


def test_adapter_without_a_local_base_is_refused_on_one_line(dirs, tmp_path) -> None:
    _, adapter = dirs
    moved = tmp_path / "adapter"
    moved.mkdir()
    for f in adapter.iterdir():
        (moved / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "some-org/some-model-7b"
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="some-org/some-model-7b.*not a local model") as ei:
        load_model(moved, device="cpu", dtype="float32")
    assert "\n" not in str(ei.value) and "hf download some-org/some-model-7b" in str(ei.value)


def test_adapter_on_a_hub_base_in_the_local_cache(tiny, lora, dirs, tmp_path,
                                                 monkeypatch) -> None:
    """PEFT writes the base model's Hub id into adapter_config.json; a base downloaded before
    is found in the local Hugging Face cache."""
    import shutil

    base, adapter = dirs
    hub_snapshot(tmp_path, monkeypatch, "acme/tiny-base", copy_of=base)
    moved = tmp_path / "adapter"
    shutil.copytree(adapter, moved)
    cfg = json.loads((moved / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "acme/tiny-base"
    (moved / "adapter_config.json").write_text(json.dumps(cfg))
    m = load_model(moved, device="cpu", dtype="float32")
    np.testing.assert_allclose(_scores(m, "loo"), _scores(lora, "loo", tokenizer=tiny.tokenizer),
                               atol=1e-5, rtol=0)


def test_prompt_learning_adapters_are_refused(tiny, dirs, tmp_path) -> None:
    base, _ = dirs
    cfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    pt = peft.get_peft_model(copy.deepcopy(tiny.model), cfg)
    d = tmp_path / "prompt_tuning"
    pt.save_pretrained(d)
    c = json.loads((d / "adapter_config.json").read_text())
    c["base_model_name_or_path"] = str(base)
    (d / "adapter_config.json").write_text(json.dumps(c))
    with pytest.raises(CapabilityError, match="PROMPT_TUNING adapter.*virtual tokens"):
        load_model(d, device="cpu", dtype="float32")
    # the same adapter as a model object (it failed in the first forward with a raw
    # RuntimeError about tensor sizes), also under an id of the caller's
    refusal = "active adapter 'default' is a PROMPT_TUNING adapter.*virtual tokens"
    with pytest.raises(CapabilityError, match=refusal):
        attrlens.explain("The capital of France is", model=pt, tokenizer=tiny.tokenizer,
                         method="loo", output=" Paris")
    with pytest.raises(CapabilityError, match=refusal):
        wrap_model(pt, tiny.tokenizer, model_id="mine")
