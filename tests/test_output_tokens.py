"""The explained output as token ids: a model can write a text in tokens other than the
tokenizer's own (SmolLM2: "\\n" + "\\n" where "\\n\\n" is one token), so its text, passed back,
scores other tokens; results keep the ids, and explain takes them back (``output=ids``,
``--output-from``)."""

from __future__ import annotations

import json

import numpy as np
import pytest

import attrlens
from attrlens.cli import main
from attrlens.errors import InputError
from attrlens.models.hf import HFModel

PROMPT = "The quick brown fox"


def test_an_output_given_as_token_ids_is_scored_as_those_tokens(tiny_model):
    tok = tiny_model.tokenizer
    canonical = tok(" jumps over", add_special_tokens=False)["input_ids"]
    by_text = attrlens.explain(PROMPT, model=tiny_model, output=" jumps over", chat=False)
    by_ids = attrlens.explain(PROMPT, model=tiny_model, output=canonical, chat=False)
    np.testing.assert_array_equal(by_text.scores, by_ids.scores)
    assert by_text.output_token_ids == canonical == by_ids.output_token_ids
    other = [tok.convert_tokens_to_ids(c) for c in ["Ġ", "j", "u", "m", "p", "s"]]
    assert other != tok(" jumps", add_special_tokens=False)["input_ids"]
    got = attrlens.explain(PROMPT, model=tiny_model, output=other, chat=False)
    assert got.output_text == " jumps" and got.output_token_ids == other
    assert got.per_output_token.shape == (4, 6)
    assert [t["text"] for t in got.output_tokens] == [" ", "j", "u", "m", "p", "s"]
    again = attrlens.Attribution.from_dict(json.loads(got.to_json()))
    assert again.output_token_ids == other


@pytest.mark.parametrize(("output", "needle"), [
    ([], "non-empty list of ids"),
    ([5, 10**9], "vocabulary (0.."),
    ([-1], "got -1"),
    ([True], "must be a string (or a list of token ids)"),
])
def test_bad_token_ids_are_refused_on_one_line(tiny_model, output, needle):
    with pytest.raises(InputError) as ei:
        attrlens.explain(PROMPT, model=tiny_model, output=output, chat=False)
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_an_answer_that_reads_back_as_other_tokens_is_kept_and_re_explained(
        tiny_dir, tmp_path, monkeypatch, capsys):
    """The model's own answer, written in tokens its tokenizer does not read back: the run
    says so (a note, recorded in the result), and --output-from the result scores the same
    tokens again, where --output-text with its text does not."""
    from conftest import make_tiny_tokenizer

    tok = make_tiny_tokenizer()
    other = [tok.convert_tokens_to_ids(c) for c in ["Ġ", "j", "u", "m", "p", "s"]]
    monkeypatch.setattr(HFModel, "generate", lambda self, ids, max_new_tokens=32: other)
    base = ["explain", PROMPT, "--model", str(tiny_dir), "--raw", "--quiet", "--json"]
    assert main([*base, str(tmp_path / "a.json")]) == 0
    assert "(6 tokens) reads back as other tokens (1:" in capsys.readouterr().err
    a = json.loads((tmp_path / "a.json").read_text())
    assert [t["id"] for t in a["output"]["tokens"]] == other
    assert any("reads back as" in w for w in a["warnings"])
    monkeypatch.undo()
    assert main([*base, str(tmp_path / "b.json"), "--output-from", str(tmp_path / "a.json")]) == 0
    assert main([*base, str(tmp_path / "c.json"), "--output-text", a["output"]["text"]]) == 0
    b, c = (json.loads((tmp_path / n).read_text()) for n in ("b.json", "c.json"))
    assert b["scores"] == a["scores"] and [t["id"] for t in b["output"]["tokens"]] == other
    assert len(c["output"]["tokens"]) == 1 and c["scores"] != a["scores"]
    capsys.readouterr()
    assert main([*base, str(tmp_path / "d.json"), "--output-from", str(tmp_path / "a.json"),
                 "--output-text", " x"]) == 2
    assert "Give --output-text or --output-from, not both." in capsys.readouterr().err
