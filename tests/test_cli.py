"""CLI: one clear line and a non-zero exit for bad input; JSON output; methods list."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from attrlens.cli import main


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_methods_lists_loo_and_lime(capsys):
    code, out, _ = run(["methods"], capsys)
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()]
    assert "loo" in names and "lime" in names


def test_explain_writes_json_on_local_model(tiny_dir, tmp_path, capsys):
    path = tmp_path / "r.json"
    code, out, err = run(
        ["explain", "The quick brown fox", "--model", str(tiny_dir), "--json", str(path),
         "--output-text", " jumps"],
        capsys,
    )
    assert code == 0, err
    d = json.loads(path.read_text())
    assert d["method"] == "loo" and [f["label"] for f in d["input"]["features"]] == [
        "The", "quick", "brown", "fox"]
    assert d["output"]["text"] == " jumps" and d["cost"]["model_forwards"] >= 1
    assert "top" in out and "cost" in out
    # what the scores were computed with, besides the model and parameters
    import torch
    import transformers

    assert d["environment"] == {"torch": torch.__version__,
                                "transformers": transformers.__version__,
                                "torch_threads": torch.get_num_threads()}


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["explain", "", "--output-text", "x"], "empty"),
        (["explain", "hi there", "--method", "limes", "--output-text", "x"], "Did you mean 'lime'"),
        (["explain", "hi there", "--granularity", "words", "--output-text", "x"], "Did you mean 'word'"),
        (["explain", "hi there friend", "--budget", "2", "--output-text", "x"], "at least 4"),
        (["explain", "hi there", "--output-text", ""], "tokenizes to nothing"),
        (["explain", "hi there", "--model", "/no/such/model"], "does not exist"),
        (["explain", "   ", "--granularity", "sentence"], "empty"),
    ],
)
def test_bad_input_one_line_error(argv, needle, tiny_dir, capsys):
    if "--model" not in argv:
        argv = argv + ["--model", str(tiny_dir)]
    code, _, err = run(argv, capsys)
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("attrlens: error:"), err
    assert needle in lines[0]


def test_prompt_plus_output_longer_than_context(tiny_dir, capsys):
    long = "word " * 600  # the tiny model's context is 512 positions
    code, _, err = run(["explain", long, "--model", str(tiny_dir), "--output-text", "x"], capsys)
    assert code == 2 and "longer than the model's context of 512" in err


def test_model_path_that_is_not_a_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = run(["explain", "hi", "--model", str(tmp_path), "--output-text", "x"], capsys)
    assert code != 0 and "no config.json" in err


def test_show_rejects_non_result(tmp_path, capsys):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"hello": 1}))
    code, _, err = run(["show", str(p)], capsys)
    assert code == 2 and "not an attrlens result" in err


def test_stdin_prompt_and_module_entry(tiny_dir, tmp_path):
    path = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "attrlens", "explain", "-", "--model", str(tiny_dir),
         "--output-text", " jumps", "--json", str(path), "--quiet"],
        input="The lazy dog", capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert [f["label"] for f in json.loads(path.read_text())["input"]["features"]] == [
        "The", "lazy", "dog"]


def test_closed_model_values_from_the_cli(fake_openai, tmp_path, capsys):
    path = tmp_path / "c.json"
    code, _out, err = run(
        ["explain", "is it raining today", "--method", "loo", "--target-url",
         fake_openai.base_url, "--target-model", "fake-model", "--closed-answers", "echo:,alt0",
         "--no-cache", "--json", str(path)],
        capsys,
    )
    assert code == 0, err
    d = json.loads(path.read_text())
    assert [f["label"] for f in d["input"]["features"]] == ["is", "it", "raining", "today"]
    assert d["cost"]["api_calls"] >= 5  # n + 1 one-token completions (plus the probe)
    assert d["params"]["closed_answers"] == ["echo:", "alt0"]
    assert d["output"]["text"] == "log p(echo:) - log p(alt0)"
    code, _, err = run(["explain", "hi", "--closed-answers", "A"], capsys)
    assert code == 2 and "--target-url" in err


def test_target_model_defaults_to_the_servers_one_model(fake_openai, tmp_path, capsys):
    """Without --target-model the name 'default' was asked for, and the error said the
    server serves no model named 'default' (a name the user never gave)."""
    path = tmp_path / "c.json"
    argv = ["explain", "is it raining", "--method", "loo", "--target-url",
            fake_openai.base_url, "--closed-answers", "echo:,alt0", "--no-cache",
            "--json", str(path)]
    code, _out, err = run(argv, capsys)
    assert code == 0, err
    assert json.loads(path.read_text())["model"]["id"] == "fake-model"
    fake_openai.models = ["fake-model", "other-model"]
    code, _out, err = run(argv, capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--target-model is needed" in err and "fake-model, other-model" in err


def test_target_url_without_a_scheme_names_the_option(capsys):
    code, _out, err = run(["explain", "hi", "--method", "loo", "--target-url",
                           "127.0.0.1:8080/v1", "--target-model", "m", "--output-text", "x"],
                          capsys)
    assert code == 2 and err.count("\n") == 1
    assert "--target-url must be an http(s) URL" in err and "base_url" not in err


# ---- generated method options and `methods NAME` ---------------------------------------------
def test_methods_name_prints_the_declaration(capsys):
    from attrlens.registry import get_explainer

    code, out, _ = run(["methods", "lime"], capsys)
    assert code == 0
    cls = get_explainer("lime")
    assert cls.paper in out and "needs:" in out and "budget:  yes" in out
    for p in cls.parameters:
        assert p.option in out and p.describe() in out and p.help in out
        assert f"default {p.default!r}" in out


def test_every_declared_parameter_is_an_explain_option():
    from attrlens.cli import build_parser
    from attrlens.registry import get_explainer, list_methods

    for name in list_methods():
        parser = build_parser(["explain", "--method", name])
        sub = parser._subparsers._group_actions[0].choices["explain"]
        opts = set(sub._option_string_actions)
        for p in get_explainer(name).parameters:
            assert (p.option in opts) == p.cli, (name, p.name)


def test_generated_option_value_is_parsed_by_the_declaration(tmp_path, capsys):
    # checked before the model loads: the model path does not exist
    code, _, err = run(["explain", "hi", "--method", "lime", "--alpha", "-1",
                        "--model", "/no/such/model"], capsys)
    assert code == 2 and "'alpha'" in err and "does not exist" not in err
    code, _, err = run(["explain", "hi", "--method", "lime", "--alpha", "x",
                        "--model", "/no/such/model"], capsys)
    assert code == 2 and "'alpha'" in err and "Got 'x'" in err


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["explain", "hi", "--nonsense", "3"], ["Unknown option '--nonsense'", "--budget"]),
        (["explain", "hi", "--method", "loo", "--alpha", "3"],
         ["no option --alpha", "lime"]),
        (["show", "x.json", "--bogus"], ["Unknown option '--bogus'", "--top"]),
    ],
)
def test_unknown_options_one_line_listing_valid_ones(argv, needles, capsys):
    code, _, err = run(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("attrlens: error:"), err
    for n in needles:
        assert n in lines[0]


def test_cheap_checks_before_the_model_loads(tmp_path, capsys):
    """Each error is reported although the model path does not exist (checked later)."""
    missing = ["--model", "/no/such/model"]
    cases = [
        (["explain", "hi", "--method", "limes"], "Did you mean 'lime'"),
        (["explain", "hi", "--granularity", "words"], "Did you mean 'word'"),
        (["explain", "hi", "--masker", "replac"], "Unknown masker"),
        (["explain", "hi", "--target", "nl"], "Unknown target"),
        (["explain", "hi", "--budget", "0"], "'budget'"),
        (["explain", "hi", "--spans", "a:b", "--granularity", "span"], "--spans takes"),
        (["explain", "hi", "--html", str(tmp_path / "no" / "r.html")], "does not exist; create"),
        # (compare and aqw took a seed beyond 2**32 - 1 until the model had loaded)
        (["compare", "a b", "a c", "--seed", "99999999999"], "--seed must be an int in"),
        (["aqw", "a: b. [[c:]]", "--seed", "4294967296"], "--seed must be an int in"),
    ]
    for argv, needle in cases:
        code, _, err = run(argv + missing, capsys)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and needle in lines[0], (argv, err)


# ---- literal terminal text, JSON before display ----------------------------------------------
def test_markup_brackets_and_ansi_are_shown_literally(tiny_dir, tmp_path, capsys):
    path = tmp_path / "r.json"
    prompt = "[INST] Name a fruit. [/INST] arr[i] [bold]x[/bold] \x1b[31mred"
    code, out, err = run(["explain", prompt, "--model", str(tiny_dir), "--raw",
                          "--output-text", " [b]apple[/b]", "--json", str(path)], capsys)
    assert code == 0, err
    assert "[INST]" in out and "[/INST]" in out and "arr[i]" in out and "[bold]x[/bold]" in out
    assert "[b]apple[/b]" in out
    assert "\x1b[31m" not in out and "\\x1b[31mred" in out
    assert "target nll" in out and "masker delete" in out
    code, out, err = run(["show", str(path)], capsys)
    assert code == 0 and "[/INST]" in out and "arr[i]" in out and "\x1b[31m" not in out


def test_json_is_written_before_a_display_failure(tiny_dir, tmp_path, capsys, monkeypatch):
    from attrlens.result import Attribution

    def broken(self, **kw):
        raise RuntimeError("terminal exploded")

    monkeypatch.setattr(Attribution, "show", broken)
    path = tmp_path / "r.json"
    code, _, err = run(["explain", "The quick fox", "--model", str(tiny_dir),
                        "--output-text", " jumps", "--json", str(path)], capsys)
    assert code == 1 and "terminal exploded" in err
    assert json.loads(path.read_text())["output"]["text"] == " jumps"


# ---- clear errors for bad files and bytes ----------------------------------------------------
def test_invalid_utf8_on_stdin_is_one_clear_line(tiny_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "attrlens", "explain", "-", "--model", str(tiny_dir),
         "--output-text", "x", "--quiet"],
        input=b"caf\xe9 \xff", capture_output=True, timeout=120, check=False,
    )
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.count("\n") == 1 and "not UTF-8" in err, err


def test_non_utf8_messages_file(tmp_path, capsys):
    p = tmp_path / "m.json"
    p.write_bytes(b'[{"role": "user", "content": "caf\xe9"}]')
    code, _, err = run(["explain", "--messages", str(p), "--model", "/no/such"], capsys)
    assert code == 2 and "not UTF-8" in err and err.count("\n") == 1


def test_a_messages_file_with_a_byte_order_mark_is_read(tiny_dir, tmp_path, capsys):
    """A UTF-8 file that starts with a BOM (as some editors save JSON) was refused."""
    p = tmp_path / "m.json"
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps([{"role": "user", "content": "Name a fruit"}])
                  .encode())
    out = tmp_path / "r.json"
    code, _, err = run(["explain", "--messages", str(p), "--model", str(tiny_dir), "--method",
                        "loo", "--output-text", " x", "--quiet", "--json", str(out)], capsys)
    assert code == 0, err
    labels = [f["label"] for f in json.loads(out.read_text())["input"]["features"]]
    assert labels == ["Name", "a", "fruit"]


def _valid_result():
    from attrlens.result import Attribution

    return Attribution(method="loo", scores=[0.5, -0.25], labels=["a", "b"],
                       spans=[[[0, 1]], [[2, 3]]], input_text="a b", output_text="o",
                       per_output_token=[[1.0, 2.0], [3.0, 4.0]],
                       interactions={"index": "fourier", "order": 2,
                                     "terms": [{"features": [0, 1], "value": 0.1}]},
                       seed=0).to_dict()


def _corrupt(kind):
    d = _valid_result()
    if kind == "empty input":
        d["input"]["features"], d["scores"] = [], []
    elif kind == "missing label":
        del d["input"]["features"][0]["label"]
    elif kind == "string scores":
        d["scores"] = ["0.5", "x"]
    elif kind == "ragged matrix":
        d["per_output_token"] = [[1.0, 2.0], [3.0]]
    elif kind == "feature index out of range":
        d["interactions"]["terms"][0]["features"] = [0, 7]
    elif kind == "non-numeric cost":
        d["cost"]["wall_s"] = "fast"
    elif kind == "span outside text":
        d["input"]["features"][1]["spans"] = [[2, 99]]
    elif kind == "input not an object":
        d["input"] = "a b"
    elif kind == "output token past the text":  # (shown as a report's columns, CSV offsets)
        d["output"]["tokens"] = [{"text": "o", "start": 0, "end": 5}]
    elif kind == "a score past a float":  # an integer literal of 401 digits
        d["scores"][0] = 10**400
    elif kind == "unknown interaction index":  # (the table was headed '(bogus)')
        d["interactions"]["index"] = "bogus"
    elif kind == "a feature twice in a term":  # (shown as 'a × a')
        d["interactions"]["terms"][0]["features"] = [0, 0]
    elif kind == "overlapping features":
        d["input"]["features"][1]["spans"] = [[0, 3]]
    elif kind == "warnings not a list":  # (left out of the HTML without a word)
        d["warnings"] = "just a string"
    elif kind == "output tokens out of order":
        d["output"]["tokens"] = [{"text": "", "start": 1, "end": 1},
                                 {"text": "o", "start": 0, "end": 1}]
    return d


@pytest.mark.parametrize("kind", [
    "empty input", "missing label", "string scores", "ragged matrix",
    "feature index out of range", "non-numeric cost", "span outside text",
    "input not an object", "output token past the text", "output tokens out of order",
    "a score past a float", "unknown interaction index", "a feature twice in a term",
    "overlapping features", "warnings not a list",
])
def test_show_on_malformed_result_is_one_line_exit_2(kind, tmp_path, capsys):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(_corrupt(kind)))
    code, _, err = run(["show", str(p)], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and "not a valid attrlens result" in lines[0], err
    assert "Traceback" not in err


def test_show_valid_result_and_html_into_missing_directory(tmp_path, capsys):
    p = tmp_path / "ok.json"
    p.write_text(json.dumps(_valid_result()))
    code, out, err = run(["show", str(p)], capsys)
    assert code == 0 and "loo" in out, err
    code, _, err = run(["show", str(p), "--html", str(tmp_path / "nope" / "r.html")], capsys)
    assert code == 2 and "does not exist" in err


def test_show_reads_a_byte_order_mark_and_says_a_missing_cost(tmp_path, capsys):
    """A result re-saved with a BOM was refused as not JSON; "cost": null was shown as
    "0 forwards · 0 tokens · 0 API calls · 0.00 s"."""
    d = _valid_result()
    p = tmp_path / "bom.json"
    p.write_text("\ufeff" + json.dumps(d), encoding="utf-8")
    code, out, err = run(["show", str(p)], capsys)
    assert code == 0 and "loo" in out, err
    p.write_text(json.dumps({**d, "cost": None}), encoding="utf-8")
    code, out, err = run(["show", str(p)], capsys)
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("cost"))
    assert "not recorded" in line and "0 forwards" not in line
    p.write_text(json.dumps({**d, "cost": {"wall_s": 1.5}}), encoding="utf-8")
    code, out, err = run(["show", str(p)], capsys)
    line = next(ln for ln in out.splitlines() if ln.startswith("cost"))
    assert "n/a forwards" in line and "1.50 s" in line


@pytest.mark.parametrize("case", ["same file", "model file", "messages file", "show input",
                                  "compare into the model"])
def test_outputs_that_would_overwrite_each_other_or_an_input_are_refused(
        case, tiny_dir, tmp_path, capsys):
    """Before, `--json x --html x` kept only the HTML, `--json <model>/config.json` wrote a
    result over the model's config (the model then failed to load), and `show r.json --html
    r.json` replaced the result with its report; each is refused on one line, before work."""
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_dir, model)
    config = (model / "config.json").read_bytes()
    msgs = tmp_path / "m.json"
    msgs.write_text(json.dumps([{"role": "user", "content": "The quick brown fox"}]))
    result = tmp_path / "r.json"
    result.write_text("{}")
    base = ["explain", "The quick brown fox", "--model", str(model), "--output-text", " x"]
    argv, needle = {
        "same file": ([*base, "--json", str(tmp_path / "o"), "--html", str(tmp_path / "o")],
                      "--json and --html name the same file"),
        "model file": ([*base, "--json", str(model / "config.json")],
                       f"--json {model / 'config.json'} would write over the model {model}"),
        "messages file": (["explain", "--messages", str(msgs), "--model", str(model),
                           "--output-text", " x", "--html", str(msgs)],
                          "--html " + str(msgs) + " would write over the --messages file"),
        "show input": (["show", str(result), "--html", str(result)],
                       "would write over the result file"),
        "compare into the model": (["compare", "a b", "a c", "--model", str(model),
                                    "--html", str(model / "tokenizer.json")],
                                   "would write over the model"),
    }[case]
    code, _, err = run(argv, capsys)
    assert code == 2 and needle in err and err.strip().count("\n") == 0, err
    assert (model / "config.json").read_bytes() == config
    assert result.read_text() == "{}" and json.loads(msgs.read_text())[0]["role"] == "user"


def test_top_below_one_is_refused_by_every_command(tiny_dir, tmp_path, capsys):
    """explain --top -1 printed 'top -1 features' without the last feature, --top 0 an empty
    table; show refused them; every command now does, on one line, before any work."""
    p = tmp_path / "ok.json"
    p.write_text(json.dumps(_valid_result()))
    for argv in (["explain", "a b", "--model", str(tiny_dir), "--output-text", " x"],
                 ["aqw", "a [[b]]", "--model", str(tiny_dir)],
                 ["compare", "a b", "a c", "--model", str(tiny_dir)], ["show", str(p)]):
        for top in ("0", "-1", "two"):
            code, _, err = run([*argv, "--top", top], capsys)
            assert code == 2 and "--top must be an int of 1 or more" in err, (argv, err)
            assert err.strip().count("\n") == 0
    from attrlens.errors import InputError
    from attrlens.result import Attribution

    attr = Attribution.from_dict(_valid_result())
    assert attr.top_k(1) == [(0, "a", 0.5)]
    for k in (0, -1, "2"):
        with pytest.raises(InputError, match="top_k needs k >= 1"):
            attr.top_k(k)


def test_a_prompt_and_messages_together_or_markers_and_a_query_span(tiny_dir, tmp_path, capsys):
    """Before, a PROMPT beside --messages was dropped without a word, and aqw with both
    [[...]] and --query-span sent the markers to the model."""
    m = tmp_path / "m.json"
    m.write_text(json.dumps([{"role": "user", "content": "hi there"}]))
    code, _, err = run(["explain", "other prompt", "--messages", str(m), "--model",
                        str(tiny_dir), "--output-text", " x"], capsys)
    assert code == 2 and "Give a PROMPT or --messages FILE, not both" in err
    code, _, err = run(["aqw", "apple: fruit. [[banana:]]", "--query-span", "0:6", "--model",
                        str(tiny_dir)], capsys)
    assert code == 2 and "not both: with a span the markers would stay in the prompt" in err


def test_a_stdin_prompt_drops_its_byte_order_mark(tiny_dir, tmp_path):
    path = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "attrlens", "explain", "-", "--model", str(tiny_dir),
         "--output-text", " x", "--json", str(path), "--quiet"],
        input="\ufeffhello world".encode(), capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    labels = [f["label"] for f in json.loads(path.read_text())["input"]["features"]]
    assert labels == ["hello", "world"]


@pytest.mark.parametrize(("argv", "needle"), [
    (["compare", "a b", "a c", "--method", "loo", "--param", "foo=1"],
     "Unknown parameter 'foo'. Valid parameters: budget."),
    (["show", "DIR"], "The result file 'DIR' is a directory."),
    (["evaluate", "DIR", "--methods", "loo", "--out", "DIR/o"],
     "The data path 'DIR' is a directory; give a JSONL file."),
])
def test_small_messages_say_what_is_wrong(argv, needle, tmp_path, capsys):
    """Before: 'Valid parameters: .' (an empty list), and a directory given for a file was
    said not to exist."""
    argv = [a.replace("DIR", str(tmp_path)) for a in argv]
    code, _, err = run(argv, capsys)
    assert code == 2 and needle.replace("DIR", str(tmp_path)) in err, err


@pytest.mark.parametrize("argv", [["methods"], ["methods", "spex"]])
def test_a_reader_that_goes_away_stops_the_output_quietly(argv):
    """`attrlens methods | head -1`: the closed pipe ended as 'internal error:
    BrokenPipeError' and exit 1; it stops quietly, as a tool stopped by SIGPIPE (141)."""
    p = subprocess.Popen([sys.executable, "-m", "attrlens", *argv], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # before the command writes anything: every write finds no reader
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert err == ""


@pytest.mark.parametrize("case", ["dash", "virtual file system", "read-only file"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(case, tmp_path, capsys,
                                                                     monkeypatch):
    """`--json /proc/nope.json` failed with 'internal error: FileNotFoundError' after the
    whole computation (lost), and `--json -` wrote a file named '-'; both are now one line
    before the model loads (a load would fail here: there is no model at --model)."""
    import os

    monkeypatch.chdir(tmp_path)
    ro = tmp_path / "ro.json"
    ro.write_text("{}")
    ro.chmod(0o444)
    if case == "read-only file" and os.access(ro, os.W_OK):
        pytest.skip("this user writes read-only files (root)")
    path, needle = {"dash": ("-", "--json - would make a file named '-'"),
                    "virtual file system": ("/proc/nope.json", "cannot be written"),
                    "read-only file": (str(ro), "cannot be written")}[case]
    code, _, err = run(["explain", "a b", "--model", str(tmp_path / "no-model"),
                        "--output-text", " x", "--json", path], capsys)
    assert code == 2 and needle in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "-").exists() and ro.read_text() == "{}"


def test_output_from_a_file_nested_too_deep_is_one_line(tmp_path, capsys):
    """`--output-from` a JSON of 100,000 nested lists ended as 'internal error:
    RecursionError' (show read the same file cleanly)."""
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000)
    code, _, err = run(["explain", "a b", "--model", str(tmp_path / "no-model"),
                        "--output-from", str(deep)], capsys)
    assert code == 2 and "is not an attrlens result: it is not JSON" in err, err


@pytest.mark.parametrize("extra,needle", [
    (["--seed", "-1"], "seed"),
    (["--max-new-tokens", "0"], "max_new_tokens"),
    (["--target", "contrastive"], "contrast"),
    (["--contrast-text", "foo"], "contrastive target"),
    (["--method", "gilot", "--target", "kl"], "does not read target"),
    (["--method", "ig", "--masker", "delete"], "does not read masker"),
    (["--method", "gilot", "--output-text", "Paris"], "not a given output"),
    (["--output-text", "Paris", "--max-new-tokens", "4"], "leave max_new_tokens out"),
    (["--template-date", "2026-13-45"], "is not a date"),
    (["--chat-template-kwargs", "[]"], "must be a JSON object"),
    (["--spans", "0:2"], "Pass granularity='span'"),
    (["--granularity", "span"], "needs spans"),
    (["--granularity", "span", "--spans", "0:9"], "outside the user's text (length 3)"),
    (["--raw", "--messages", "MSGS"], "leave out chat=False (--raw)"),
    (["--messages", "NOUSER"], "no message with role user has content"),
])
def test_explain_checks_its_arguments_before_the_model_loads(extra, needle, tmp_path, capsys):
    """Each was refused only after the model had loaded (13-26 s on the embedded model);
    here there is no model at --model, so a check after the load would say that instead."""
    msgs = tmp_path / "m.json"
    msgs.write_text(json.dumps([{"role": "user", "content": "a b"}]))
    nouser = tmp_path / "n.json"
    nouser.write_text(json.dumps([{"role": "system", "content": "a b"}]))
    extra = [str(msgs) if x == "MSGS" else str(nouser) if x == "NOUSER" else x for x in extra]
    prompt = [] if "--messages" in extra else ["a b"]
    code, _, err = run(["explain", *prompt, "--model", str(tmp_path / "no-model"), *extra],
                       capsys)
    assert code == 2 and needle in err and "no-model" not in err, err


@pytest.mark.parametrize("argv,needle", [
    (["explain", "a b", "--method", "lime", "--num-samples", "1000", "--num-samples", "3"],
     "--num-samples was given twice (1000 and 3)"),
    (["compare", "a b", "a c", "--method", "lime", "--num-samples", "20", "--param",
      "num_samples=10"], "'num_samples' was given twice"),
    (["compare", "a b", "a c", "--method", "lime", "--budget", "6", "--param", "budget=4"],
     "'budget' was given twice"),
    (["aqw", "a [[b]]", "--method", "lime", "--param", "alpha=1", "--param", "alpha=2"],
     "'alpha' was given twice"),
])
def test_a_method_parameter_given_twice_is_refused(argv, needle, tmp_path, capsys):
    """The last value was kept without a word (compare recorded num_samples 10 of 20/10 and
    budget 6 of 6/4)."""
    code, _, err = run([*argv, "--model", str(tmp_path / "no-model")], capsys)
    assert code == 2 and needle in err and err.strip().count("\n") == 0, err


@pytest.mark.parametrize("extra,needle", [
    (["--no-cache"], "--no-cache needs --target-url"),
    (["--api-key-env", "NOPE_VAR"], "--api-key-env needs --target-url"),
    (["--target-model", "m", "--no-cache"], "--target-model and --no-cache need --target-url"),
])
def test_served_model_options_without_a_served_model_are_refused(extra, needle, tmp_path,
                                                                 capsys):
    """--no-cache and --api-key-env did nothing without --target-url, silently."""
    code, _, err = run(["explain", "a b", "--model", str(tmp_path / "no-model"), *extra],
                       capsys)
    assert code == 2 and needle in err, err


@pytest.mark.integration
@pytest.mark.parametrize("spans,needle", [
    ("0:2,2:3", "The span (2, 3) 'e' lies inside tokens"),
    ("0:5,5:11", "The spans (0, 5) and (5, 11) both fall in the token ' cat' at (3, 7)"),
])
def test_span_errors_give_the_users_offsets(spans, needle, capsys):
    """They gave the chat-rendered text's: 'The span (117, 118)', '(115, 120) and (120,
    126) ... at (118, 122)' for the 11-character prompt."""
    code, _, err = run(["explain", "The cat sat", "--granularity", "span", "--spans", spans,
                        "--output-text", " x", "--quiet"], capsys)
    assert code == 2 and needle in err, err


def test_a_result_of_another_schema_version_is_named_as_such(tmp_path, capsys):
    """A file of schema attrlens.attribution/2 was called 'not an attrlens result'."""
    d = _valid_result()
    d["schema"] = "attrlens.attribution/2"
    p = tmp_path / "new.json"
    p.write_text(json.dumps(d))
    code, _, err = run(["show", str(p)], capsys)
    assert code == 2 and 'is an attrlens file of schema "attrlens.attribution/2"' in err, err
    assert "not an attrlens result" not in err


def test_an_empty_model_path_is_named_as_such(capsys):
    """--model '' said "The directory '.' is not a transformers model"."""
    code, _, err = run(["explain", "a b", "--model", "", "--output-text", " x"], capsys)
    assert code == 2 and "The model path is empty" in err, err


def test_paths_the_system_refuses_are_one_line_errors(tmp_path, capsys):
    """A name too long for the file system, or an --out the system will not create, was
    "attrlens: internal error: OSError ..." (exit 1)."""
    long = tmp_path / ("a" * 300)
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "the cat sat", "output": " x"}\n', encoding="utf-8")
    for argv, needle in (
        (["show", f"{long}.json"], "Could not read the result file"),
        (["evaluate", f"{long}.jsonl", "--methods", "loo", "--out", str(tmp_path / "o")],
         "File name too long"),
        (["evaluate", str(data), "--methods", "loo", "--out", str(long / "run")],
         "cannot be created"),
    ):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "internal error" not in err, err


def test_abbreviated_options_are_refused(capsys):
    """``--meth lime`` ran lime (argparse's abbreviations) while the method-option scan read
    loo: "--num-samples is a parameter of lime" was refused for 'loo'."""
    assert main(["explain", "Hi there", "--meth", "lime", "--num-samples", "10"]) == 2
    err = capsys.readouterr().err
    assert "Unknown option '--meth'" in err and "Did you mean '--method'" in err


def test_the_progress_bar_extends_for_each_round_of_evaluations():
    """Two rounds of the same size (a game called twice with 5 new masks) made one bar of 5:
    the second round only moved it from 5 to 5."""
    from attrlens.cli.common import Progress

    bar = Progress(True, "x")
    for d, t in [(0, 2), (2, 2), (0, 5), (3, 5), (5, 5), (0, 5), (5, 5)]:
        bar(d, t)
    task = bar._bar.tasks[0]
    assert (task.total, task.completed) == (12, 12)
    bar.close()


def test_a_seed_given_to_a_method_that_draws_nothing_is_said(tiny_dir, tmp_path, capsys):
    """--seed 3 with loo ran as if it mattered; the scores are the seed-0 scores, and the
    command now says the seed changes nothing (methods that draw keep their seed)."""
    base = ["explain", "the cat sat on the mat", "--model", str(tiny_dir), "--output-text",
            " x", "--raw", "--quiet"]
    scores = {}
    for seed in (None, "3"):
        path = tmp_path / f"loo{seed}.json"
        code, _, err = run([*base, "--method", "loo", "--json", str(path),
                            *(["--seed", seed] if seed else [])], capsys)
        assert code == 0, err
        assert ("draws nothing at random: --seed 3 changes none" in err) == (seed == "3")
        d = json.loads(path.read_text())
        scores[seed] = d["scores"]
        assert d["seed"] == (3 if seed else 0)
    assert scores[None] == scores["3"]
    code, _, err = run([*base, "--method", "lime", "--seed", "3", "--budget", "40"], capsys)
    assert code == 0 and "draws nothing" not in err, err


@pytest.mark.parametrize("argv", [
    ["explain", "Hi there", "--json", ""],
    ["explain", "Hi there", "--html", " "],
    ["aqw", "a [[b]]", "--json", ""],
    ["compare", "a b", "a c", "--html", ""],
])
def test_an_empty_output_file_name_is_refused(argv, capsys):
    """--json '' (an unset $OUT) exited 0 and wrote nothing, silently with --quiet."""
    code = main([*argv, "--quiet", "--model", "/no/such"])
    err = capsys.readouterr().err
    assert code == 2 and "got an empty file name" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv, needle", [
    (["--method", "spex", "--order", "3", "--max-order", "2"], "exceeds max_order (2)"),
    (["--method", "gilot_kl", "--vocab-k", "5"], "does not read vocab_k"),
    (["--method", "gilot_kl", "--distance", "ot"], "for distance=ot use --method gilot"),
    (["--method", "attention_rollout", "--residual", "1"], "makes every layer the identity"),
])
def test_cross_parameter_errors_come_before_the_model_loads(argv, needle, capsys):
    """These waited for the model's load and the answer's generation (11 s here) although
    they need no feature count; attention_rollout's residual 1 gave all-zero scores."""
    code = main(["explain", "Hi there", *argv, "--model", "/no/such/model", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "/no/such" not in err, err
