"""Chat-template keyword arguments (Qwen3's ``enable_thinking`` and the like): rendered into
every chat prompt, recorded with results and in evaluation record keys, from the API, the
CLI and evaluate (also on Ray workers that load the model themselves)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from conftest import explain_argv, save_model_dir

import attrlens
from attrlens.errors import ParameterError
from attrlens.models.hf import HFModel
from attrlens.text.prompt import build_prompt

#: the generation prompt of a thinking model: with enable_thinking false, an empty
#: reasoning block comes before the answer
THINKING = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% if enable_thinking is defined and not "
    "enable_thinking %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}{% endif %}"
)
PROMPT = "The quick brown fox jumps over the lazy dog."
OUTPUT = " A stitch in time."
OFF = {"enable_thinking": False}


@pytest.fixture(scope="module")
def thinking(tiny_model):
    tok = copy.deepcopy(tiny_model.tokenizer)
    tok.chat_template = THINKING
    return HFModel(tiny_model.model, tok, info=tiny_model.info)


def test_kwargs_reach_the_template_and_the_result(thinking):
    off = thinking.with_chat_template(**OFF)
    assert off.model is thinking.model and off.tokenizer is thinking.tokenizer
    assert "</think>" in build_prompt(PROMPT, off).text
    assert "</think>" not in build_prompt(PROMPT, thinking).text  # the original is unchanged
    a = attrlens.explain(PROMPT, model=off, method="loo", output=OUTPUT)
    b = attrlens.explain(PROMPT, model=thinking, method="loo", output=OUTPUT)
    assert a.model["chat_template_kwargs"] == OFF and "chat_template_kwargs" not in b.model
    assert a.labels == b.labels and np.abs(a.scores - b.scores).max() > 1e-3
    back = attrlens.Attribution.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back.model["chat_template_kwargs"] == OFF
    assert thinking.with_chat_template().info.chat_template_kwargs is None
    with pytest.raises(ParameterError, match="not a JSON value"):
        thinking.with_chat_template(when=object())
    with pytest.raises(ParameterError, match="tokenize are set by attrlens"):
        thinking.with_chat_template(tokenize=True)


def test_cli_flag_and_its_one_line_errors(thinking, tmp_path, capsys):
    from attrlens.cli import main

    d = save_model_dir(thinking, tmp_path / "model")
    out = tmp_path / "r.json"
    base = explain_argv(d, PROMPT, OUTPUT, out)
    assert main([*base, "--chat-template-kwargs", '{"enable_thinking": false}']) == 0
    res = json.loads(out.read_text())
    assert res["model"]["chat_template_kwargs"] == OFF and "</think>" in res["input"]["text"]
    for bad, why in [("{enable_thinking: false}", "not valid JSON"), ("[1]", "JSON object")]:
        capsys.readouterr()
        assert main([*base, "--chat-template-kwargs", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1


def test_evaluate_keys_records_by_the_kwargs(thinking, tmp_path):
    items = [{"id": "fox", "prompt": PROMPT, "output": OUTPUT}]
    kw = {"methods": ["loo"], "metrics": ["abpc"], "model": thinking, "out": tmp_path / "o",
          "progress": False, "report": False, "chat": True}
    s = attrlens.evaluate(items, chat_template_kwargs=OFF, **kw)
    assert s.computed == 1
    rec = [json.loads(x) for x in (tmp_path / "o" / "records.jsonl").read_text().splitlines()]
    assert rec[0]["model"]["chat_template_kwargs"] == OFF
    assert attrlens.evaluate(items, chat_template_kwargs=OFF, **kw).computed == 0  # resumed
    assert attrlens.evaluate(items, **kw).computed == 1  # other prompts: not reused
    with pytest.raises(ParameterError, match="chat_template_kwargs must be a dict"):
        attrlens.evaluate(items, chat_template_kwargs="enable_thinking=false", **kw)


def test_a_worker_that_loads_the_model_applies_the_kwargs(thinking, tmp_path):
    """Ray actors of a model with code of its own load it from a dict of load_model
    arguments (``_model_for_ray``); the kwargs travel in it."""
    from attrlens.evaluation.runner import EvalConfig, ItemRunner

    d = save_model_dir(thinking, tmp_path / "model")
    spec = {"path": str(d), "device": "cpu", "dtype": "float32", "chat_template_kwargs": OFF}
    runner = ItemRunner(spec, EvalConfig(metrics=("abpc",)), 0)
    assert runner.model.info.chat_template_kwargs == OFF
    assert "</think>" in build_prompt(PROMPT, runner.model).text
