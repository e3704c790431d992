"""A planted secret (URL userinfo and an API key) for served-model runs against the real
llama.cpp server: it is found in no artifact (result JSON, HTML, the call cache, stdout,
stderr), in successful and failing runs alike."""

from __future__ import annotations

import base64
import json

import pytest

from attrlens.cli import main

PASSWORD = "pw-SECRET-4c3b2a19"
KEY = "sk-SECRET-planted-8877665544"


@pytest.mark.integration
def test_planted_secrets_reach_no_artifact(llama_server, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ATTRLENS_TEST_KEY", KEY)
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(cache_dir))
    monkeypatch.setenv("COLUMNS", "400")
    host = llama_server.base_url.split("://", 1)[1]
    url = f"http://alice:{PASSWORD}@{host}"
    common = ["--target-url", url, "--target-model", llama_server.model_name,
              "--api-key-env", "ATTRLENS_TEST_KEY", "--max-new-tokens", "4", "--dtype",
              "float32"]
    outputs: list[str] = []
    files = []

    def run(argv):
        code = main(argv)
        got = capsys.readouterr()
        outputs.extend([got.out, got.err])
        return code, got

    # 1. a game-based method on the served model itself (a probed log-likelihood route)
    j1, h1 = tmp_path / "served.json", tmp_path / "served.html"
    code, got = run(["explain", "What is 2+2?", "--method", "loo", *common,
                     "--json", str(j1), "--html", str(h1)])
    assert code == 0, got.err
    files += [j1, h1]
    d = json.loads(j1.read_text())
    # provenance: the served model by name at its redacted endpoint
    assert d["model"]["id"] == llama_server.model_name
    assert d["model"]["endpoint"] == f"http://***@{host}"
    assert d["model"]["local_id"] and d["model"]["scored_by"]

    # 2. the closed model's own answer log-probs
    j2, h2 = tmp_path / "closed.json", tmp_path / "closed.html"
    code, got = run(["explain", "Is 2+2 equal to 4? Answer Yes or No.", "--method", "loo",
                     "--closed-answers", "Yes,No", *common, "--json", str(j2),
                     "--html", str(h2)])
    assert code == 0, got.err
    files += [j2, h2]
    d2 = json.loads(j2.read_text())
    assert d2["model"]["id"] == llama_server.model_name and d2["input"]["text"]

    # 3. failing runs: a wrong model name, a wrong path on the server
    code, got = run(["explain", "hi", "--method", "loo", *common[:2], "--target-model",
                     "no-such-model", *common[4:]])
    assert code != 0 and got.err.count("\n") == 1
    code, got = run(["explain", "hi", "--method", "loo", "--target-url", url + "/nope",
                     *common[2:]])
    assert code != 0 and got.err.count("\n") == 1

    # 4. the cache commands
    code, got = run(["cache", "info"])
    assert code == 0 and host.split("/")[0] in got.out  # endpoints stored without userinfo
    code, got = run(["cache", "info", "--json"])
    assert code == 0

    files += [f for f in cache_dir.iterdir() if f.is_file()]
    assert any(f.name.startswith("calls.sqlite") for f in files)
    basic = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    for secret in (PASSWORD, KEY, basic, "SECRET"):
        for text in outputs:
            assert secret not in text, text
        for f in files:
            assert secret.encode() not in f.read_bytes(), f.name
