"""Chat templates that write today's date into the prompt (Llama 3.2's "Today Date: ...",
Granite's): the date is fixed when the model is loaded and recorded with every result, so a
run's prompts do not change at midnight, a result can be reproduced on a later day
(``with_template_date`` / ``--template-date``), and an evaluation rerun on a later day
resumes its records instead of computing them again on other prompts."""

from __future__ import annotations

import copy
import datetime
import json

import numpy as np
import pytest
from conftest import explain_argv, save_model_dir

import attrlens
from attrlens.errors import ParameterError
from attrlens.models import hf
from attrlens.models.hf import HFModel
from attrlens.text.prompt import build_prompt

#: a system line with the date, as Llama 3.2's template writes it
DATED = (
    "{% if strftime_now is defined %}{% set date_string = strftime_now(\"%d %b %Y\") %}"
    "{% else %}{% set date_string = '26 Jul 2024' %}{% endif %}"
    "{{ '<|im_start|>system\\nToday Date: ' + date_string + '<|im_end|>\\n' }}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PROMPT = "The quick brown fox jumps over the lazy dog."
OUTPUT = " A stitch in time."


def dated_model(tiny_model, monkeypatch, day: str) -> HFModel:
    """The tiny model with the dated template, loaded on ``day``."""
    monkeypatch.setattr(hf, "today", lambda: day)
    tok = copy.deepcopy(tiny_model.tokenizer)
    tok.chat_template = DATED
    return HFModel(tiny_model.model, tok, info=tiny_model.info)


@pytest.fixture
def clock(monkeypatch):
    """Sets the clock transformers' ``strftime_now`` reads: ``clock("2027-01-01")``."""
    from transformers.utils import chat_template_utils

    def set_day(day: str) -> None:
        moment = datetime.datetime.fromisoformat(day + "T23:59:00")

        class Frozen(datetime.datetime):
            @classmethod
            def now(cls, tz=None):
                return moment

        monkeypatch.setattr(chat_template_utils, "datetime", Frozen)

    return set_day


def test_the_prompt_keeps_the_load_day_after_midnight(tiny_model, monkeypatch, clock) -> None:
    clock("2026-12-01")
    m = dated_model(tiny_model, monkeypatch, "2026-12-01")
    assert m.template_reads_date and m.info.template_date == "2026-12-01"
    before = build_prompt(PROMPT, m).text
    assert "Today Date: 01 Dec 2026" in before
    clock("2026-12-02")  # the clock moves on; the model's prompts do not
    assert build_prompt(PROMPT, m).text == before
    assert not tiny_model.template_reads_date and tiny_model.info.template_date is None


def test_the_date_is_recorded_and_reproduces_the_result(tiny_model, monkeypatch) -> None:
    m = dated_model(tiny_model, monkeypatch, "2026-12-01")
    a = attrlens.explain(PROMPT, model=m, method="loo", output=OUTPUT)
    assert a.model["template_date"] == "2026-12-01" and "01 Dec 2026" in a.input_text
    back = attrlens.Attribution.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back.model["template_date"] == "2026-12-01"
    # loaded on a later day, the recorded date gives the same prompt and scores again
    later = dated_model(tiny_model, monkeypatch, "2027-03-15")
    b = attrlens.explain(PROMPT, model=later, method="loo", output=OUTPUT)
    assert "15 Mar 2027" in b.input_text and b.model["template_date"] == "2027-03-15"
    again = attrlens.explain(PROMPT, model=later.with_template_date("2026-12-01"),
                             method="loo", output=OUTPUT)
    assert again.input_text == a.input_text
    np.testing.assert_allclose(again.scores, a.scores, rtol=0, atol=1e-6)
    assert later.info.template_date == "2027-03-15"  # with_template_date makes a new view
    # no date for a template without one, nor in its results
    plain = attrlens.explain(PROMPT, model=tiny_model, method="loo", output=OUTPUT)
    assert "template_date" not in plain.model


def test_one_line_errors(tiny_model, monkeypatch) -> None:
    m = dated_model(tiny_model, monkeypatch, "2026-12-01")
    for bad in ("01/12/2026", "2026-13-01", "tomorrow"):
        with pytest.raises(ParameterError, match="YYYY-MM-DD") as e:
            m.with_template_date(bad)
        assert len(str(e.value).splitlines()) == 1
    with pytest.raises(ParameterError, match="does not read the date"):
        tiny_model.with_template_date("2026-12-01")
    with pytest.raises(ParameterError, match="strftime_now are set by attrlens"):
        m.with_chat_template(strftime_now="2026-12-01")
    # the chat template's arguments keep the date, and the other way round
    kw = m.with_template_date("2025-01-02").with_chat_template(flag=True)
    assert kw.info.template_date == "2025-01-02" and kw.info.chat_template_kwargs == {"flag": True}


def test_cli_flag(tiny_model, monkeypatch, tmp_path, capsys) -> None:
    from attrlens.cli import main

    m = dated_model(tiny_model, monkeypatch, "2026-12-01")
    d = save_model_dir(m, tmp_path / "model")
    out = tmp_path / "r.json"
    base = explain_argv(d, PROMPT, OUTPUT, out)
    assert main([*base, "--template-date", "2024-07-26"]) == 0
    res = json.loads(out.read_text())
    assert res["model"]["template_date"] == "2024-07-26"
    assert "Today Date: 26 Jul 2024" in res["input"]["text"]
    assert main(base) == 0  # the day it was loaded ("today", as patched)
    assert json.loads(out.read_text())["model"]["template_date"] == "2026-12-01"
    capsys.readouterr()
    assert main([*base, "--template-date", "26.07.2024"]) == 2
    err = capsys.readouterr().err.strip()
    assert "YYYY-MM-DD" in err and len(err.splitlines()) == 1


def test_evaluate_rerun_on_a_later_day_resumes(tiny_model, monkeypatch, tmp_path) -> None:
    items = [{"id": "fox", "prompt": PROMPT, "output": OUTPUT}]
    kw = {"methods": ["loo"], "metrics": ["abpc"], "out": tmp_path / "o", "progress": False,
          "report": False, "chat": True}
    first = attrlens.evaluate(items, model=dated_model(tiny_model, monkeypatch, "2026-12-01"),
                              **kw)
    assert first.computed == 1
    recs = [json.loads(x) for x in (tmp_path / "o" / "records.jsonl").read_text().splitlines()]
    assert recs[0]["model"]["template_date"] == "2026-12-01"
    # the next day, a new process loads the model: the run's date is taken from its records
    later = dated_model(tiny_model, monkeypatch, "2026-12-02")
    again = attrlens.evaluate(items, model=later, **kw)
    assert again.computed == 0 and again.skipped == 1
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["settings"]["template_date"] == "2026-12-01"
    # a date asked for explicitly: other prompts, computed
    other = attrlens.evaluate(items, model=later, template_date="2026-12-02", **kw)
    assert other.computed == 1
    with pytest.raises(ParameterError, match="YYYY-MM-DD"):
        attrlens.evaluate(items, model=later, template_date="yesterday", **kw)


def test_a_worker_that_loads_the_model_renders_the_drivers_date(tiny_model, monkeypatch,
                                                               tmp_path) -> None:
    """Ray actors of a model with code of its own load it from a dict of load_model
    arguments (``_model_for_ray``); the driver's date travels in it."""
    from attrlens.evaluation.runner import EvalConfig, ItemRunner

    m = dated_model(tiny_model, monkeypatch, "2026-12-01")
    d = save_model_dir(m, tmp_path / "model")
    monkeypatch.setattr(hf, "today", lambda: "2026-12-02")  # the worker starts after midnight
    spec = {"path": str(d), "device": "cpu", "dtype": "float32", "template_date": "2026-12-01"}
    runner = ItemRunner(spec, EvalConfig(metrics=("abpc",)), 0)
    assert runner.model.info.template_date == "2026-12-01"
    assert "01 Dec 2026" in build_prompt(PROMPT, runner.model).text


def test_only_literal_formats_are_fixed(tiny_model, monkeypatch) -> None:
    from attrlens.errors import CapabilityError
    from attrlens.models.hf import _dated_template

    t = "{{ strftime_now('%Y-%m-%d') }}|{{ strftime_now( \"%d %B\" ) }}|{{ x is defined }}"
    assert _dated_template(t, "2026-02-03") == '{{ "2026-02-03" }}|{{ "03 February" }}|{{ x is defined }}'
    assert _dated_template("{{ strftime_now(fmt) }}", "2026-02-03") is None
    assert _dated_template("no clock", "2026-02-03") == "no clock"
    # a template that computes its format: prompts follow the clock, no date is recorded
    monkeypatch.setattr(hf, "today", lambda: "2026-12-01")
    tok = copy.deepcopy(tiny_model.tokenizer)
    tok.chat_template = "{% set f = '%d' %}{{ strftime_now(f) }}" + DATED
    m = HFModel(tiny_model.model, tok, info=tiny_model.info)
    assert m.template_reads_date and m.info.template_date is None
    with pytest.raises(CapabilityError, match="cannot fix to one date"):
        m.with_template_date("2026-12-01")
