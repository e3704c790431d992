"""``attrlens explain --target-url ... --route R`` (game-based methods on the served model)
and ``--audit K`` (RoPE-LIME / gSMILE audited against it), against the real llama.cpp
server on loopback; option errors are checked before any model loads or call is made."""

from __future__ import annotations

import json

import pytest

from attrlens.cli import main


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["explain", "hi there", "--route", "forced_tokens", "--output-text", "x"],
         "needs a served model"),
        (["explain", "hi there", "--route", "echoes", "--output-text", "x"],
         "Did you mean 'echo'"),
        (["explain", "hi there", "--audit", "5", "--output-text", "x"], "--audit checks"),
        (["explain", "hi there", "--target-url", "http://127.0.0.1:9/v1", "--method", "loo",
          "--route", "generate", "--output-text", "x"], "belongs to gsmile"),
        (["explain", "hi there", "--target-url", "http://127.0.0.1:9/v1", "--method",
          "rope_lime", "--route", "echo", "--output-text", "x"], "runs through the route"),
        (["explain", "hi there", "--target-url", "http://127.0.0.1:9/v1", "--method",
          "rope_lime", "--audit", "2", "--output-text", "x"], "K >= 3"),
        # the served prompts delete the masked text: --masker replace was recorded, not done
        (["explain", "hi there", "--target-url", "http://127.0.0.1:9/v1", "--method", "loo",
          "--masker", "replace", "--output-text", "x"], "masker 'replace' cannot apply"),
    ],
)
def test_served_option_errors_are_one_line(argv, needle, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert needle in err and err.count("\n") == 1


@pytest.mark.integration
def test_loo_on_the_served_model_and_audit(llama_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(tmp_path / "cache"))
    base = ["--target-url", llama_server.base_url, "--target-model", llama_server.model_name,
            "--output-text", "Paris", "--quiet"]
    prompt = "What is the capital of France? Answer in one word."
    path = tmp_path / "loo.json"
    code, _, err = run(["explain", prompt, "--method", "loo", "--route", "forced_tokens",
                        "--json", str(path), *base], capsys)
    assert code == 0, err
    d = json.loads(path.read_text())
    assert d["params"]["route"] == "forced_tokens"
    n = len(d["input"]["features"])
    assert d["cost"]["value_calls"] == n + 1 and d["cost"]["api_calls"] >= n + 1
    # the same run again: every served call comes from the persistent cache
    code, _, err = run(["explain", prompt, "--method", "loo", "--route", "forced_tokens",
                        "--json", str(path), *base], capsys)
    d2 = json.loads(path.read_text())
    assert code == 0 and d2["cost"]["api_calls"] == 0 and d2["cost"]["cached_calls"] >= n + 1
    assert d2["input"]["features"] == d["input"]["features"]
    # kernel_shap's own masker is replace, but the served prompts deleted the text
    code, _, err = run(["explain", prompt, "--method", "kernel_shap", "--budget", "20",
                        "--route", "forced_tokens", "--json", str(path), *base], capsys)
    assert code == 0 and json.loads(path.read_text())["params"]["masker"] == "delete", err

    apath = tmp_path / "audit.json"
    code, _, err = run(["explain", prompt, "--method", "rope_lime", "--budget", "10",
                        "--audit", "4", "--json", str(apath), *base], capsys)
    assert code == 0, err
    a = json.loads(apath.read_text())
    audit = a["audit"]  # extra keys are top-level keys of the result file
    assert audit["k"] == 4 and audit["route"] == "forced_tokens"
    assert audit["cost"]["value_calls"] == 4
    # on an empty cache every call of the audit (its route probe, /tokenize and the exact
    # values, whose llama.cpp answers count tokens as tokens_evaluated) is in the cost
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(tmp_path / "cache2"))
    code, _, err = run(["explain", prompt, "--method", "rope_lime", "--budget", "10",
                        "--audit", "4", "--json", str(apath), *base], capsys)
    assert code == 0, err
    a = json.loads(apath.read_text())
    assert a["cost"]["api_calls"] > a["audit"]["cost"]["api_calls"] >= 4
    assert a["cost"]["prompt_tokens"] > 0 and a["cost"]["completion_tokens"] >= 4


@pytest.mark.integration
def test_rope_lime_on_a_given_output_needs_no_live_endpoint(tmp_path, capsys):
    """RoPE-LIME makes no closed-model call on an output given to it (its answer is logged):
    the command refused to run while the endpoint was down. A run that calls it (gSMILE)
    still checks it before the model loads."""
    dead = ["--target-url", "http://127.0.0.1:9/v1", "--target-model", "gpt-closed",
            "--quiet"]
    path = tmp_path / "r.json"
    code, _, err = run(["explain", "Is the sky blue? Answer yes or no.", "--method",
                        "rope_lime", "--output-text", "No.", "--budget", "8", "--json",
                        str(path), *dead], capsys)
    assert code == 0, err
    d = json.loads(path.read_text())
    assert d["cost"]["api_calls"] == 0 and d["output"]["text"] == "No."
    code, _, err = run(["explain", "Is the sky blue?", "--method", "gsmile", "--output-text",
                        "No.", *dead], capsys)
    assert code != 0 and "127.0.0.1:9" in err and err.count("\n") == 1
