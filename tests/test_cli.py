"""CLI: one clear line and a non-zero exit for bad input; JSON output; methods list."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from attrlens.cli import main


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_model):
    """The tiny test model saved as a local transformers directory."""
    d = tmp_path_factory.mktemp("tiny")
    tiny_model.model.save_pretrained(d)
    tiny_model.tokenizer.save_pretrained(d)
    return d


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
         "--max-new-tokens", "4", "--output-text", " jumps"],
        capsys,
    )
    assert code == 0, err
    d = json.loads(path.read_text())
    assert d["method"] == "loo" and [f["label"] for f in d["input"]["features"]] == [
        "The", "quick", "brown", "fox"]
    assert d["output"]["text"] == " jumps" and d["cost"]["model_forwards"] >= 1
    assert "top" in out and "cost" in out


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
