"""Property-based CLI suite (hypothesis, bounded): generated prompts (markup, brackets, ANSI,
RTL, control tokens, invalid UTF-8), generated result files (valid and corrupted) and
generated arguments go through the CLI and ``show``. Every run ends in exit 0 with the text
shown literally, or exit 2 with one line and no traceback (never an internal error)."""

from __future__ import annotations

import copy
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attrlens.cli import main
from attrlens.report.terminal import literal

SETTINGS = settings(max_examples=30, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])

# pieces of hostile text: rich markup, chat control tokens, ANSI, bidi overrides, brackets
PIECES = ["[INST]", "[/INST]", "[bold]", "[/]", "arr[i]", "[[x]]", "<|im_end|>",
          "<|im_start|>", "\x1b[31m", "\x1b]8;;http://x\x07", "\u202e", "\u2066", "שלום",
          "مرحبا", "\x00", "\x7f", "\\", "{", "}", "%s", "&amp;", "<script>", "😀", "word"]
piece = st.one_of(st.sampled_from(PIECES),
                  st.text(st.characters(blacklist_categories=("Cs",),
                                        blacklist_characters="\t\n\r\x0b\x0c"),
                          min_size=1, max_size=6))
prompts = st.lists(piece, min_size=1, max_size=6).map(" ".join)


@pytest.fixture(autouse=True)
def wide_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def ok_or_one_line(code: int, err: str) -> None:
    assert "Traceback" not in err and "internal error" not in err, err
    if code != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("attrlens: error:"), err


# ---- prompts through explain -------------------------------------------------------------------
@pytest.mark.integration
@SETTINGS
@given(prompt=prompts)
def test_generated_prompts_are_explained_and_shown_literally(prompt, tiny_dir, tmp_path_factory,
                                                             capsys):
    path = tmp_path_factory.mktemp("p") / "r.json"
    code, out, err = run(["explain", prompt, "--model", str(tiny_dir), "--output-text", " ok",
                          "--json", str(path), "--raw"], capsys)
    ok_or_one_line(code, err)
    if code != 0:
        assert not prompt.strip() or "no features" in err or "empty" in err, err
        return
    d = json.loads(path.read_text(encoding="utf-8"))
    assert d["input"]["text"] == prompt  # stored exactly
    shown = literal(prompt.strip())
    assert shown in out.replace("\n", "")
    assert "\x1b" not in out and "\u202e" not in out  # nothing reaches the terminal raw
    code, out2, err = run(["show", str(path)], capsys)
    assert code == 0, err
    assert shown in out2.replace("\n", "")


@SETTINGS
@given(data=st.binary(min_size=0, max_size=40))
def test_generated_bytes_on_stdin(data, monkeypatch, capsys):
    """Invalid UTF-8 is one clear line; valid text reaches the model loader (a missing model
    here, so the run stops right there with exit 2)."""
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
    code, _, err = run(["explain", "-", "--model", "/no/such/model", "--output-text", "x"],
                       capsys)
    ok_or_one_line(code, err)
    assert code == 2
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        assert "not UTF-8" in err
    else:
        assert "not UTF-8" not in err


# ---- result files through show -----------------------------------------------------------------
labels = st.lists(prompts, min_size=1, max_size=5)
finite = st.floats(-1e6, 1e6, allow_nan=False)


def _result(labs, scores):
    from attrlens.result import Attribution

    text, spans = "", []
    for lab in labs:
        start = len(text) + (1 if text else 0)
        text = f"{text} {lab}" if text else lab
        spans.append([[start, len(text)]])
    return Attribution(method="loo", scores=scores, labels=labs, spans=spans, input_text=text,
                       output_text=labs[0], seed=0).to_dict()


@SETTINGS
@given(labs=labels, data=st.data())
def test_generated_valid_results_are_shown_literally(labs, data, tmp_path_factory, capsys):
    scores = data.draw(st.lists(finite, min_size=len(labs), max_size=len(labs)))
    path = tmp_path_factory.mktemp("r") / "r.json"
    path.write_text(json.dumps(_result(labs, scores)), encoding="utf-8")
    code, out, err = run(["show", str(path), "--top", "5"], capsys)
    assert code == 0, err
    flat = out.replace("\n", "")
    assert literal(" ".join(labs)) in flat
    assert "\x1b" not in out and "\u202e" not in out


MUTATIONS = [
    ("drop", "scores"), ("drop", "input"), ("drop", "schema"), ("set", "scores", "x"),
    ("set", "scores", [None, "1"]), ("set", "input", {"features": []}),
    ("set", "per_output_token", [[1.0], []]), ("set", "cost", {"wall_s": "slow"}),
    ("set", "seed", "zero"), ("set", "version", 3), ("set", "method", ""),
    ("set", "interactions", {"terms": [{"features": [99], "value": 1}]}),
    ("set", "params", []), ("set", "output", None), ("label", None), ("span", [5, 1]),
    ("span", [0, 10**6]), ("truncate", None), ("bytes", b"\xff\xfe{"), ("set", "metadata",
                                                                        {"aqw": "x"}),
]


@SETTINGS
@given(labs=labels, mutations=st.lists(st.sampled_from(MUTATIONS), min_size=1, max_size=3))
def test_generated_corrupt_results_are_one_line_errors(labs, mutations, tmp_path_factory,
                                                       capsys):
    d = _result(labs, [0.5] * len(labs))
    raw: bytes | None = None
    for m in mutations:
        d = copy.deepcopy(d)
        if m[0] == "drop":
            d.pop(m[1], None)
        elif m[0] == "set":
            d[m[1]] = m[2]
        elif m[0] == "label" and isinstance(d.get("input"), dict) and d["input"].get("features"):
            d["input"]["features"][0]["label"] = None
        elif m[0] == "span" and isinstance(d.get("input"), dict) and d["input"].get("features"):
            d["input"]["features"][0]["spans"] = [m[1]]
        elif m[0] == "truncate":
            raw = json.dumps(d).encode()[: max(1, len(json.dumps(d)) // 2)]
        elif m[0] == "bytes":
            raw = m[1]
    path = tmp_path_factory.mktemp("c") / "bad.json"
    path.write_bytes(raw if raw is not None else json.dumps(d).encode())
    code, _, err = run(["show", str(path)], capsys)
    ok_or_one_line(code, err)


@SETTINGS
@given(a=labels, b=labels, slot=st.integers(-2, 8))
def test_generated_comparisons_show_or_fail_in_one_line(a, b, slot, tmp_path_factory, capsys):
    d = {"schema": "attrlens.comparison/1", "version": "0", "a": _result(a, [1.0] * len(a)),
         "b": _result(b, [2.0] * len(b)), "slots": [[[slot], [0]]]}
    path = tmp_path_factory.mktemp("cmp") / "c.json"
    path.write_text(json.dumps(d), encoding="utf-8")
    code, out, err = run(["show", str(path)], capsys)
    ok_or_one_line(code, err)
    assert (code == 0) == (0 <= slot < len(a))
    if code == 0:
        assert literal(a[slot].strip()) in out.replace("\n", "")
        assert "\x1b" not in out and "\u202e" not in out


# ---- generated arguments -----------------------------------------------------------------------
OPTIONS = ["--method", "--granularity", "--masker", "--target", "--budget", "--seed",
           "--spans", "--top", "--max-new-tokens", "--beams", "--k", "--json", "--html",
           "--route", "--audit", "--query-span", "--param", "--endpoint", "--nope", "-x"]
VALUES = ["loo", "gilot", "spex", "kernel_shap", "word", "token", "none", "-1", "0", "3",
          "1e9", "a:b", "0:2", "[/INST]", "\x1b[0m", "/no/such/dir/x.json", "beams=2", "",
          "nan", "--"]


@SETTINGS
@given(cmd=st.sampled_from(["explain", "aqw", "compare", "show", "methods", "cache",
                            "bogus"]),
       words=st.lists(st.tuples(st.sampled_from(OPTIONS), st.sampled_from(VALUES)),
                      max_size=4))
def test_generated_arguments_never_crash(cmd, words, capsys):
    argv = [cmd]
    if cmd in ("explain", "aqw"):
        argv.append("a [[b]] c")
    elif cmd == "compare":
        argv += ["a b", "a c"]
    elif cmd == "show":
        argv.append("/no/such/result.json")
    for opt, val in words:
        argv += [opt, val]
    if cmd in ("explain", "aqw", "compare"):
        argv += ["--model", "/no/such/model"]  # every run stops before real work
    code, out, err = run(argv, capsys)
    ok_or_one_line(code, err)
    if cmd == "methods" and code == 0:
        assert out.strip()
