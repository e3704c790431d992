"""Data-set adapters on the shared samples (repository-relative paths)."""

from __future__ import annotations

import json
import re

import pytest

from attrlens.errors import InputError
from attrlens.evaluation.datasets import (
    EvalItem,
    load_items,
    repo_root,
    resolve_data_path,
)
from attrlens.evaluation.hotpotqa import load_hotpotqa

DATA = "../shared/data"


def _have(name: str) -> bool:
    return (repo_root() / DATA / name).is_file()


needs_shared = pytest.mark.skipif(not _have("alpaca_50.jsonl"), reason="no ../shared/data")


@needs_shared
def test_relative_paths_resolve_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = resolve_data_path(f"{DATA}/alpaca_50.jsonl")
    assert p.is_file()
    with pytest.raises(InputError, match="does not exist"):
        resolve_data_path("no/such/file.jsonl")


@needs_shared
def test_alpaca():
    items = load_items(f"{DATA}/alpaca_50.jsonl", limit=3)
    assert len(items) == 3
    first = json.loads((repo_root() / DATA / "alpaca_50.jsonl").open().readline())
    it = items[0]
    assert it.id == f"alpaca-{first['subset_index']}"
    assert it.prompt == f"{first['instruction']}\n\n{first['input']}"
    assert it.output is None  # the model's own answer is explained (GiLOT)
    assert it.meta["reference"] == first["output"]
    assert items[1].prompt == json.loads(
        (repo_root() / DATA / "alpaca_50.jsonl").open().readlines()[1])["instruction"]


@needs_shared
def test_sst2_drop_mmlu_word_spans():
    for name, kind in [("sst2_dev_100.jsonl", "sst2"), ("drop_dev_50.jsonl", "drop"),
                       ("mmlu_test_100.jsonl", "mmlu")]:
        items = load_items(f"{DATA}/{name}", limit=2)
        for it in items:
            assert it.meta["kind"] == kind and it.granularity == "span"
            words = [it.prompt[a:b] for a, b in it.spans]
            assert all(w and not any(c.isspace() for c in w) for w in words)
            assert all(b1 <= a2 for (_, b1), (a2, _) in zip(it.spans, it.spans[1:]))
    sst = load_items(f"{DATA}/sst2_dev_100.jsonl", limit=1)[0]
    rec = json.loads((repo_root() / DATA / "sst2_dev_100.jsonl").open().readline())
    assert [sst.prompt[a:b] for a, b in sst.spans] == rec["sentence"].split()
    assert sst.output == f" {rec['label_text']}"
    drop = load_items(f"{DATA}/drop_dev_50.jsonl", limit=1)[0]
    rec = json.loads((repo_root() / DATA / "drop_dev_50.jsonl").open().readline())
    assert [drop.prompt[a:b] for a, b in drop.spans] == rec["passage"].split()
    assert drop.output == f" {rec['answers'][0]}"
    mm = load_items(f"{DATA}/mmlu_test_100.jsonl", limit=1)[0]
    words = [mm.prompt[a:b] for a, b in mm.spans]
    assert "A." not in words and mm.output.strip() in "ABCD"


@needs_shared
def test_hotpotqa_gold_matches_the_hotpotqa_module():
    items = load_items(f"{DATA}/hotpotqa_dev_distractor_100.jsonl", limit=3)
    ref = load_hotpotqa(repo_root() / DATA / "hotpotqa_dev_distractor_100.jsonl", n=3)
    for it, h in zip(items, ref):
        text, spans = h.prompt()
        assert it.prompt == text and list(it.spans) == spans
        assert list(it.gold) == h.gold and len(it.gold) >= 2
        assert it.output is None


def test_generic_records_and_checks(tmp_path):
    p = tmp_path / "d.jsonl"
    recs = [
        {"id": "x", "prompt": "one two three", "output": " four"},
        {"prompt": "a b c", "spans": [[0, 1], [2, 3], [4, 5]], "labels": [0, 1, 1]},
        {"messages": [{"role": "user", "content": "hi there"}]},
    ]
    p.write_text("\n".join(json.dumps(r) for r in recs) + "\n\n")
    items = load_items(p)
    assert [i.id for i in items] == ["x", "d-1", "d-2"]
    assert items[1].granularity == "span" and items[1].gold == (1, 2)
    assert isinstance(items[2].prompt, tuple)
    assert items[0].sha256 != items[1].sha256
    assert items[0].sha256 == load_items(p)[0].sha256  # content hash is stable
    assert load_items(p, limit=1) == items[:1]
    with pytest.raises(InputError, match="unique"):
        load_items([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    with pytest.raises(InputError, match="Cannot tell"):
        load_items([{"text": "x"}])
    with pytest.raises(InputError, match="limit"):
        load_items(p, limit=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    with pytest.raises(InputError, match="invalid JSON"):
        load_items(bad)
    assert isinstance(load_items([EvalItem("z", "p")])[0], EvalItem)


@pytest.mark.parametrize(("rec", "needle"), [
    ({"prompt": None}, "'prompt' must be a string; got NoneType"),
    ({"prompt": 123}, "'prompt' must be a string; got int"),
    ({"prompt": ["a", "b"]}, "'prompt' must be a string; got list"),
    ({"messages": [{"role": "user", "content": {"a": 1}}]}, "string values"),
    ({"prompt": "a b", "messages": [{"role": "user", "content": "x y"}]},
     "'prompt' or 'messages', not both"),
    ({"prompt": "a b", "output": 123}, "'output' must be a string; got int"),
    ({"prompt": "a b", "spans": "0:3"}, "'spans' must be a list of [start, end] pairs"),
    ({"prompt": "a b", "spans": [[0]]}, "'spans' must be a list of [start, end] pairs"),
    ({"prompt": "a b", "spans": [[0.5, 3.7]]}, "'spans' must be a list of [start, end] pairs"),
    ({"prompt": "a b", "labels": 5}, "'labels' must be a list of feature indices"),
    ({"prompt": "a b", "labels": "abc"}, "'labels' must be a list of feature indices"),
    # a 0/1 vector without spans was read as the indices {0, 1}: gold = the first two words
    ({"prompt": "The sky is blue today", "labels": [0, 0, 0, 1, 0]},
     "a 0/1 flag per feature needs the record's 'spans'"),
    ({"prompt": "a b", "labels": [True, False]}, "repeat a value or hold true/false"),
    ("just a string", "Record 1 is not a JSON object ({...}); got str"),
    # refused when the model had loaded (the run aborted after "1 records to compute")
    ({"prompt": "a b c", "granularity": "wordz"},
     ("Unknown granularity 'wordz'. Valid granularities: message, sentence, span, token, "
      "word. Did you mean 'word'?")),
    ({"prompt": "a b c", "granularity": "span"}, "granularity 'span' needs the record's 'spans'"),
    # a failed record that "a rerun tries again" (rc 1) once the model had loaded
    ({"messages": [{"role": "usr", "content": "hi there"}]},
     "Chat message 0 has an unknown role: Unknown role 'usr'."),
    ({"messages": []}, "Chat messages must be a non-empty list"),
    ({"sentence": "fine", "label": None}, "'label' must be 0 (negative) or 1 (positive)"),
])
def test_malformed_generic_records_are_refused_naming_the_field(rec, needle):
    """Before, a null, number or list prompt (or a dict content) was turned into text with
    str() and explained ('None'), a prompt beside messages was dropped, float spans were
    truncated, and the rest failed with raw Python messages (a string record listed its
    characters as field names)."""
    with pytest.raises(InputError) as ei:
        load_items([rec])
    assert needle in str(ei.value) and "\n" not in str(ei.value)


def test_an_unknown_field_of_a_generic_record_is_refused_with_a_hint(tmp_path):
    """A misspelt 'output' was ignored: the model's own answer was explained instead of "x".
    The adapters' own fields still load."""
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"prompt": "a b"}) + "\n\n"
                 + json.dumps({"id": "q7", "prompt": "Hi there.", "outptu": "x"}) + "\n")
    with pytest.raises(InputError) as ei:
        load_items(p)
    msg = str(ei.value)
    assert msg.startswith("Line 3 of d.jsonl (id 'q7') is not a valid generic record: "
                          "Unknown field 'outptu'.") and "\n" not in msg
    assert "Did you mean 'output'?" in msg
    assert "granularity, id, labels, messages, output, prompt, spans" in msg
    with pytest.raises(InputError, match="Record 1 is not a valid generic record: Unknown "
                                         "field 'lables'.* Did you mean 'labels'"):
        load_items([{"prompt": "a b", "lables": [1]}])
    # every field of the shared data sets' records is read (or kept as provenance)
    items = load_items([
        {"instruction": "Say hi.", "input": "", "output": "hi", "subset_index": 1},
        {"sentence": "fine", "label": 1, "label_text": "positive", "dev_index": 2},
        {"passage": "a b", "question": "q?", "answers": ["a"], "source_line": 3},
        {"subject": "s", "question": "q?", "choices": ["a", "b", "c", "d"], "answer": "A",
         "answer_index": 0, "source_row": 4},
        {"id": "h", "dev_index": 5, "question": "q?", "answer": "a", "type": "bridge",
         "level": "easy", "context": [["T", ["One.", " Two."]]],
         "supporting_facts": [["T", 1]]},
    ])
    assert [i.meta["kind"] for i in items] == ["alpaca", "sst2", "drop", "mmlu", "hotpotqa"]


def test_a_data_file_with_a_byte_order_mark_or_not_utf8(tmp_path):
    p = tmp_path / "bom.jsonl"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps({"prompt": "a b"}).encode() + b"\n")
    assert load_items(p)[0].prompt == "a b"
    q = tmp_path / "utf16.jsonl"
    q.write_bytes('{"prompt": "a b"}\n'.encode("utf-16"))
    with pytest.raises(InputError, match="is not UTF-8 text"):
        load_items(q)
    r = tmp_path / "sep.jsonl"  # U+2028 inside a JSON string is not a line break
    r.write_text(json.dumps({"prompt": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert load_items(r)[0].prompt == "a\u2028b"


@needs_shared
def test_every_mmlu_item_of_the_shared_sample_has_its_own_id():
    """MMLU numbers its rows per subject: the sample holds row 190 of two subjects, and
    the whole file was refused ("Two items have the id 'mmlu-190'")."""
    items = load_items(f"{DATA}/mmlu_test_100.jsonl")
    assert len(items) == 100 and len({it.id for it in items}) == 100
    assert {it.id for it in items if it.meta["source_row"] == 190} == {
        "mmlu-high_school_world_history-190", "mmlu-miscellaneous-190"}


def test_limit_stops_reading_at_the_limit(tmp_path):
    """load_items(path, limit=1) parsed line 2 before stopping: a malformed line (or bytes
    that are not UTF-8) after the limit aborted the run. Lines after the limit are not read."""
    p = tmp_path / "d.jsonl"
    p.write_bytes(b'{"prompt": "a b c", "output": " x"}\n{"prompt": "a b\n\xff\xfe not text\n')
    items = load_items(p, limit=1)
    assert [it.prompt for it in items] == ["a b c"]
    with pytest.raises(InputError, match=r"d.jsonl:2: invalid JSON"):
        load_items(p, limit=2)
    with pytest.raises(InputError, match=r"d.jsonl:2: invalid JSON"):
        load_items(p)
    q = tmp_path / "e.jsonl"  # a record that is JSON but not an item, after the limit
    q.write_text('{"prompt": "a"}\n{"outptu": "x"}\n', encoding="utf-8")
    assert len(load_items(q, limit=1)) == 1


def test_alpaca_null_input_is_no_input():
    """A null 'input' (as JSON exports of Alpaca write) was put in the prompt as "None"."""
    it = load_items([{"instruction": "Name a fruit.", "input": None, "output": "Apple"}])[0]
    assert it.prompt == "Name a fruit."
    it = load_items([{"instruction": "Sum these.", "input": " 1, 2 ", "output": "3"}])[0]
    assert it.prompt == "Sum these.\n\n1, 2"
    with pytest.raises(InputError, match="'instruction' must be a string"):
        load_items([{"instruction": 7, "input": ""}])


Q = {"question": "2 + 2?", "choices": ["3", "4", "5", "6"]}


@pytest.mark.parametrize(("fields", "output"), [
    ({"answer": "B"}, " B"), ({"answer": 1}, " B"), ({"answer": 0}, " A"),
    ({"answer_index": 3}, " D"), ({"answer": "C", "answer_index": 2}, " C"), ({}, None),
])
def test_mmlu_answer_as_a_letter_or_a_choice_index(fields, output):
    """The Hugging Face copy of MMLU gives the answer as an index: 1 became the output " 1"
    (and 0 no output at all)."""
    assert load_items([{**Q, **fields}])[0].output == output


@pytest.mark.parametrize(("fields", "needle"), [
    ({"answer": 4}, "'answer' must be one of A, B, C, D or a choice index 0..3; got 4"),
    ({"answer": "E"}, "got 'E'"), ({"answer": "AB"}, "got 'AB'"), ({"answer": True}, "got True"),
    ({"answer": "B", "answer_index": 2}, "'answer' 'B' and 'answer_index' 2 disagree"),
    ({"choices": ["only one"]}, "'choices' must be a list of 2 to 10 answers"),
])
def test_mmlu_answers_that_name_no_choice_are_refused(fields, needle):
    with pytest.raises(InputError, match=re.escape(needle)):
        load_items([{**Q, **fields}])


def test_mmlu_with_more_than_four_choices_freezes_every_choice_letter():
    it = load_items([{"question": "Pick one", "choices": list("pqrstu"), "answer": 5}])[0]
    assert it.output == " F"
    words = [it.prompt[a:b].strip() for a, b in it.spans]
    assert words == ["Pick", "one", "p", "q", "r", "s", "t", "u"]


@pytest.mark.parametrize(("fields", "needle"), [
    ({"label": 1, "label_text": "negative"},
     "'label' 1 (positive) and 'label_text' 'negative' disagree"),
    ({"label": -1}, "an unlabelled test row has -1"),
    ({"label_text": "neutral"}, "'label_text' must be 'negative' or 'positive'"),
    ({"label": True}, "got True"),
])
def test_sst2_labels_that_disagree_or_name_no_class_are_refused(fields, needle):
    """label 1 with label_text 'negative' took the text without a word; -1 (GLUE's
    unlabelled test rows) became ' negative'."""
    with pytest.raises(InputError, match=re.escape(needle)):
        load_items([{"sentence": "a fine film", **fields}])


def test_sst2_label_or_label_text_alone():
    assert load_items([{"sentence": "a fine film", "label": 1}])[0].output == " positive"
    assert load_items([{"sentence": "a dull film", "label_text": "negative"}])[0].output == (
        " negative")


@pytest.mark.parametrize(("rec", "needle"), [
    ({"sentence": None, "label": 1}, "'sentence' must be a string; got NoneType"),
    ({"sentence": 12, "label": 1}, "'sentence' must be a string; got int 12"),
    ({"passage": None, "question": "q?"}, "'passage' must be a string"),
    ({"passage": "one two", "question": None}, "'question' must be a string"),
    ({"passage": "one two", "question": "q?", "answers": "12"},
     "'answers' must be a list of strings; got '12'"),
    ({"passage": "one two", "question": "q?", "answers": [12]}, "'answers' must be a list"),
    ({**Q, "choices": ["a", None, "c", "d"]}, "'choices' must be strings"),
    ({**Q, "question": None}, "'question' must be a string"),
    ({"prompt": "a b c", "id": None}, "'id' must be a string or an integer"),
    ({"prompt": "a b c", "id": [1, 2]}, "'id' must be a string or an integer"),
    ({"prompt": "a b c", "id": True}, "'id' must be a string or an integer"),
    ({"question": "q", "context": [["T", "s1 s2"]], "supporting_facts": [["T", 0]]},
     "is not [title, [sentence, ...]] of strings"),
    ({"question": "q", "context": [["T", ["s1", None]]], "supporting_facts": [["T", 0]]},
     "is not [title, [sentence, ...]] of strings"),
    ({"question": "q", "context": "T s1", "supporting_facts": []}, "context is a str"),
    ({"question": None, "context": [["T", ["s1"]]], "supporting_facts": [["T", 0]]},
     "question is None, not a string"),
])
def test_fields_of_the_wrong_type_are_refused_not_turned_into_text(rec, needle):
    """str() read a null as the text "None" (an SST-2 review "None" was explained), a DROP
    answer "12" as its characters (the output " 1"), and a HotpotQA paragraph given as one
    string as one feature per character; a null id became the id "None"."""
    with pytest.raises(InputError, match=re.escape(needle)):
        load_items([rec])


def test_drop_answers_list_and_integer_ids_still_load():
    it = load_items([{"passage": "one two", "question": "q?", "answers": ["12", "twelve"]}])[0]
    assert it.output == " 12" and it.meta["answers"] == ["12", "twelve"]
    assert load_items([{"prompt": "a b c", "id": 7}])[0].id == "7"
