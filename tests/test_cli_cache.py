"""CLI: ``attrlens cache info`` / ``attrlens cache clear [--endpoint URL]`` on a real call
cache filled through the fake OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import stat

from attrlens.cli import main
from attrlens.models.openai import OpenAIBackend

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0}


def run(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def _fill(server, cache_dir, prompts, *, userinfo: str = ""):
    url = server.base_url.replace("http://", f"http://{userinfo}") if userinfo else server.base_url
    be = OpenAIBackend(url, "fake-model", cache_dir=cache_dir, **FAST)
    for p in prompts:
        be.chat(p)
    be.cache.close()
    be.close()


def test_info_on_a_missing_cache_does_not_create_it(tmp_path, capsys):
    d = tmp_path / "none"
    code, out, err = run(["cache", "info", "--dir", str(d)], capsys)
    assert code == 0, err
    assert str(d / "calls.sqlite") in out and "entries  0 (no cache file yet)" in out
    assert not d.exists()
    code, out, _ = run(["cache", "clear", "--dir", str(d)], capsys)
    assert code == 0 and out.strip() == "deleted 0 cached calls" and not d.exists()


def test_info_counts_calls_per_endpoint_and_clear_deletes_them(fake_openai, tmp_path, capsys):
    d = tmp_path / "cache"
    _fill(fake_openai, d, ["one", "two", "three"], userinfo="bob:pw-SECRET-771@")
    code, out, err = run(["cache", "info", "--dir", str(d)], capsys)
    assert code == 0, err
    assert "entries  3" in out and "pw-SECRET-771" not in out
    endpoint_lines = [ln for ln in out.splitlines() if ln.startswith("  ")]
    assert len(endpoint_lines) == 1 and endpoint_lines[0].split()[0] == "3"
    assert "127.0.0.1" in endpoint_lines[0]
    # private file in a private directory
    assert stat.S_IMODE(os.stat(d / "calls.sqlite").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d).st_mode) == 0o700
    code, out, _ = run(["cache", "info", "--dir", str(d), "--json"], capsys)
    info = json.loads(out)
    assert info["entries"] == 3 and info["exists"] and sum(info["endpoints"].values()) == 3
    # another endpoint's calls stay when one endpoint is cleared
    code, out, _ = run(["cache", "clear", "--dir", str(d), "--endpoint",
                        "http://127.0.0.1:1/v1"], capsys)
    assert code == 0 and out.startswith("deleted 0 cached calls of http://127.0.0.1:1/v1")
    code, out, _ = run(["cache", "clear", "--dir", str(d), "--endpoint",
                        "http://eve:pw-SECRET-771@" + fake_openai.base_url[len("http://"):]
                        + "/"], capsys)
    assert code == 0 and out.startswith("deleted 3 cached calls") and "pw-SECRET" not in out
    code, out, _ = run(["cache", "info", "--dir", str(d), "--json"], capsys)
    assert json.loads(out)["entries"] == 0


def test_clear_all_and_env_default(fake_openai, tmp_path, capsys, monkeypatch):
    d = tmp_path / "envcache"
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(d))
    _fill(fake_openai, None, ["a", "b"])
    code, out, _ = run(["cache", "info"], capsys)
    assert code == 0 and str(d) in out and "entries  2" in out
    code, out, _ = run(["cache", "clear"], capsys)
    assert code == 0 and out.strip() == "deleted 2 cached calls"


def test_cache_needs_a_subcommand(capsys):
    code, _, err = run(["cache"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("attrlens: error:")
    code, _, err = run(["cache", "info", "--bogus"], capsys)
    assert code == 2 and "--dir" in err and err.count("\n") == 1


def test_damaged_cache_is_one_line_and_clear_deletes_it(tmp_path, capsys):
    d = tmp_path / "bad"
    d.mkdir()
    (d / "calls.sqlite").write_bytes(b"garbage, not an SQLite file" * 50)
    code, out, err = run(["cache", "info", "--dir", str(d)], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 3 and len(lines) == 1 and lines[0].startswith("attrlens: error:")
    assert str(d / "calls.sqlite") in err and "damaged" in err and "internal" not in err
    code, out, err = run(["cache", "clear", "--dir", str(d)], capsys)
    assert code == 0, err
    assert "damaged" in out and "deleted the file" in out and str(d / "calls.sqlite") in out
    assert not (d / "calls.sqlite").exists()
    code, out, _ = run(["cache", "info", "--dir", str(d)], capsys)
    assert code == 0 and "no cache file yet" in out


def test_a_file_or_empty_dir_or_endpoint_is_a_one_line_error(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    for argv, needle in (
        (["cache", "info", "--dir", str(afile)], "is not a directory"),
        (["cache", "clear", "--dir", str(afile)], "is not a directory"),
        (["cache", "info", "--dir", ""], "cache directory is empty"),
        (["cache", "clear", "--dir", ""], "cache directory is empty"),
        (["cache", "clear", "--dir", str(tmp_path), "--endpoint", ""], "endpoint to clear"),
    ):
        code, out, err = run(argv, capsys)
        assert code == 2 and out == "", argv
        assert err.startswith("attrlens: error:") and err.count("\n") == 1, argv
        assert needle in err, (argv, err)
    assert afile.read_text() == "not a directory"


def test_info_lists_the_model_copies_and_clear_models_deletes_only_them(fake_openai, tmp_path,
                                                                        capsys):
    """The de-quantized GGUF copies (~0.5 GB each) were counted nowhere: `cache info` showed
    only the call cache, and nothing but `rm -rf` removed them."""
    d = tmp_path / "cache"
    _fill(fake_openai, d, ["one"])
    models = d / "models"
    done = models / "0123abcd.transformers5"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    (done / "model.safetensors").write_bytes(b"\0" * 3000)
    (done / "attrlens_source.json").write_text(json.dumps({"gguf": "/m/tiny.gguf"}))
    old = models / "4567ef.transformers4"  # written before the source was recorded
    old.mkdir()
    (old / "config.json").write_text("{}")
    stopped = models / "89ab.transformers5.tmp4242"  # a conversion killed midway
    stopped.mkdir()
    (stopped / "model.safetensors").write_bytes(b"\0" * 100)
    (models / "cpu_dtype.json").write_text("{}")  # the dtype memo is not a copy
    code, out, err = run(["cache", "info", "--dir", str(d)], capsys)
    assert code == 0, err
    assert "entries  1" in out
    assert f"model copies  3 (3.1 KiB) in {models}" in out
    assert "0123abcd.transformers5  (from /m/tiny.gguf)" in out
    assert "4567ef.transformers4  (source not recorded)" in out
    assert "89ab.transformers5.tmp4242  (a conversion stopped midway)" in out
    code, out, _ = run(["cache", "info", "--dir", str(d), "--json"], capsys)
    info = json.loads(out)["model_copies"]
    files = [p for p in models.rglob("*") if p.is_file() and p.name != "cpu_dtype.json"]
    assert info["size_bytes"] == sum(c["size_bytes"] for c in info["copies"]) == sum(
        p.stat().st_size for p in files) > 3100
    assert [c["complete"] for c in info["copies"]].count(False) == 1
    code, out, err = run(["cache", "clear", "--models", "--endpoint", "http://x/v1", "--dir",
                          str(d)], capsys)
    assert code == 2 and "not both" in err
    code, out, err = run(["cache", "clear", "--models", "--dir", str(d)], capsys)
    assert code == 0, err
    assert out.startswith("deleted 3 model copies (3.1 KiB)")
    assert sorted(p.name for p in models.iterdir()) == ["cpu_dtype.json"]
    code, out, _ = run(["cache", "info", "--dir", str(d)], capsys)
    assert "entries  1" in out and "model copies  0 (0 B)" in out  # the calls are kept
