"""Tests of the persistent call cache (SQLite)."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest

from attrlens.errors import BackendError
from attrlens.models.cache import (
    _SCHEMA,
    CallCache,
    cache_clear,
    cache_info,
    cache_key,
    default_cache_dir,
    endpoint_label,
)

REQ = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def test_default_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("ATTRLENS_CACHE_DIR")
    assert default_cache_dir() == tmp_path / "xdg" / "attrlens"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "attrlens"
    # the model copies' root is the same resolver: "~" expanded in both (the models went
    # to a folder named "~" under the working directory)
    from attrlens.models.hf import cache_dir, gguf_copy_dir

    monkeypatch.setenv("ATTRLENS_CACHE_DIR", "~/al")
    assert cache_dir() == default_cache_dir() == tmp_path / "home" / "al"
    assert gguf_copy_dir("ab" * 32).is_relative_to(tmp_path / "home" / "al" / "models")


def test_default_cache_file_lives_in_default_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(tmp_path))
    cache = CallCache()
    cache.put("k", {"a": 1})
    assert (tmp_path / "calls.sqlite").is_file()
    assert cache.get("k") == {"a": 1}


def test_key_ignores_dict_order_and_trailing_slash():
    reordered = {"max_tokens": 4, "messages": [{"content": "hi", "role": "user"}], "model": "m"}
    assert cache_key("http://h/v1", "m", REQ) == cache_key("http://h/v1/", "m", reordered)


@pytest.mark.parametrize(
    "change",
    [
        ("endpoint", "http://other/v1"),
        ("model", "m2"),
        ("request", {**REQ, "max_tokens": 5}),
        ("request", {**REQ, "seed": 1}),
        ("request", {**REQ, "messages": [{"role": "user", "content": "hi!"}]}),
    ],
)
def test_key_changes_with_anything_that_changes_the_answer(change):
    base = {"endpoint": "http://h/v1", "model": "m", "request": REQ}
    other = {**base, change[0]: change[1]}
    assert cache_key(**base) != cache_key(**other)


def test_put_get_len_contains_clear(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    assert len(cache) == 0
    assert cache.get("a") is None
    cache.put("a", {"x": [1, 2]}, endpoint="http://h/v1", model="m", request=REQ)
    cache.put("b", {"y": "é"})
    assert len(cache) == 2
    assert "a" in cache and "zz" not in cache
    assert cache.get("a") == {"x": [1, 2]}
    assert cache.get("b") == {"y": "é"}
    cache.put("a", {"x": 3})  # replacing keeps one row
    assert len(cache) == 2 and cache.get("a") == {"x": 3}
    cache.clear()
    assert len(cache) == 0


def test_each_put_is_committed_at_once(tmp_path):
    """A second, independent connection sees a row before the writer closes: nothing is
    lost if the writing process dies right after a call."""
    path = tmp_path / "c.sqlite"
    writer = CallCache(path)
    writer.put("k1", {"v": 1})
    other = sqlite3.connect(path)
    try:
        rows = other.execute("SELECT key FROM calls").fetchall()
    finally:
        other.close()
    assert rows == [("k1",)]
    assert CallCache(path).get("k1") == {"v": 1}  # and a new process-like reader sees it


def test_uses_wal_journal(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    cache.put("k", {})
    conn = sqlite3.connect(tmp_path / "c.sqlite")
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_threads_share_one_cache(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(25):
                cache.put(f"{t}-{i}", {"t": t, "i": i})
                assert cache.get(f"{t}-{i}") == {"t": t, "i": i}
        except BaseException as exc:  # noqa: BLE001 - surfaced by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len(cache) == 200


def test_unwritable_location_gives_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = CallCache(blocker / "sub" / "c.sqlite")
    with pytest.raises(BackendError, match="Cannot open the call cache"):
        cache.put("k", {})


def test_close_then_reuse(tmp_path):
    cache = CallCache(Path(tmp_path) / "c.sqlite")
    cache.put("k", {"v": 1})
    cache.close()
    assert cache.get("k") == {"v": 1}


# --- credentials, file modes, management ----------------------------------------------
def _all_bytes(directory: Path) -> bytes:
    """Every byte of every file in ``directory`` (the SQLite file, its WAL and SHM)."""
    return b"".join(p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file())


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_key_ignores_credentials_but_not_the_endpoint():
    plain = cache_key("http://h/v1", "m", REQ)
    assert cache_key("http://user:SECRET@h/v1", "m", REQ) == plain
    assert cache_key("http://user:SECRET@h2/v1", "m", REQ) != plain
    assert endpoint_label("http://user:SECRET@h/v1/") == "http://h/v1"


def test_endpoint_column_never_holds_credentials(tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    cache.put("k", {"a": 1}, endpoint="http://user:SECRETPW@h/v1", model="m", request=REQ)
    cache.close()
    assert b"SECRETPW" not in _all_bytes(tmp_path)
    assert cache_info(tmp_path)["endpoints"] == {"http://h/v1": 1}


def test_rows_of_older_versions_are_scrubbed_on_open(tmp_path):
    path = tmp_path / "calls.sqlite"
    conn = sqlite3.connect(path)
    conn.execute(_SCHEMA)
    conn.execute(
        "INSERT INTO calls VALUES (?, ?, ?, ?, ?, ?)",
        ("k", "http://alice:OLDSECRET@h/v1", "m", "{}", "{}", 0.0),
    )
    conn.commit()
    conn.close()
    assert b"OLDSECRET" in path.read_bytes()
    cache = CallCache(path)
    assert len(cache) == 1
    cache.close()
    assert b"OLDSECRET" not in _all_bytes(tmp_path)
    assert cache_info(tmp_path)["endpoints"] == {"http://h/v1": 1}


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_new_cache_is_private(tmp_path):
    old = os.umask(0o022)  # a typical umask: files 0644, directories 0755 by default
    try:
        cache = CallCache(tmp_path / "a" / "b" / "calls.sqlite")
        cache.put("k", {"v": 1})
        assert _mode(tmp_path / "a" / "b") == 0o700
        for p in (tmp_path / "a" / "b").iterdir():  # calls.sqlite, -wal, -shm
            assert _mode(p) == 0o600, p.name
    finally:
        os.umask(old)


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_existing_cache_is_tightened_on_open(tmp_path):
    cdir = tmp_path / "cache"
    first = CallCache(cdir / "calls.sqlite")
    first.put("k", {"v": 1})
    first.close()
    cdir.chmod(0o755)
    for p in cdir.iterdir():
        p.chmod(0o644)
    again = CallCache(cdir / "calls.sqlite")
    assert again.get("k") == {"v": 1}
    assert _mode(cdir) == 0o700
    for p in cdir.iterdir():
        assert _mode(p) == 0o600, p.name


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_shared_directory_keeps_its_mode_but_the_file_is_private(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    (shared / "notes.txt").write_text("someone else's file")
    cache = CallCache(shared / "calls.sqlite")
    cache.put("k", {})
    assert _mode(shared) == 0o755
    assert _mode(shared / "calls.sqlite") == 0o600


def test_cache_info_of_a_missing_cache_creates_nothing(tmp_path):
    info = cache_info(tmp_path / "none")
    assert info == {
        "path": str(tmp_path / "none" / "calls.sqlite"),
        "exists": False,
        "entries": 0,
        "size_bytes": 0,
        "endpoints": {},
        "oldest": None,
        "newest": None,
    }
    assert cache_clear(cache_dir=tmp_path / "none") == 0
    assert not (tmp_path / "none").exists()


def test_cache_info_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(tmp_path))
    CallCache().put("k", {}, endpoint="http://h/v1")
    info = cache_info()
    assert info["path"] == str(tmp_path / "calls.sqlite") and info["entries"] == 1


def test_cache_info_and_clear_by_endpoint(tmp_path):
    cache = CallCache(tmp_path / "calls.sqlite")
    for i in range(3):
        cache.put(f"a{i}", {"answer": f"MARKER-A-{i}"}, endpoint="http://a/v1", model="m")
    for i in range(2):
        cache.put(f"b{i}", {"answer": f"MARKER-B-{i}"}, endpoint="http://u:pw99@b:81/v1/")
    cache.close()
    info = cache_info(tmp_path)
    assert info["exists"] is True and info["entries"] == 5
    assert info["endpoints"] == {"http://a/v1": 3, "http://b:81/v1": 2}
    assert info["size_bytes"] > 0 and info["oldest"] <= info["newest"]
    # the endpoint may be given with or without credentials and trailing slash
    assert cache_clear("http://other:pw@b:81/v1", cache_dir=tmp_path) == 2
    assert cache_clear("http://b:81/v1", cache_dir=tmp_path) == 0
    assert cache_info(tmp_path)["endpoints"] == {"http://a/v1": 3}
    data = _all_bytes(tmp_path)
    assert b"MARKER-B" not in data and b"MARKER-A-0" in data  # deleted text is gone from disk
    assert cache_clear(cache_dir=tmp_path) == 3
    assert cache_info(tmp_path)["entries"] == 0
    assert b"MARKER-A" not in _all_bytes(tmp_path)


def test_clearing_an_endpoint_clears_the_rows_of_its_server_root(tmp_path):
    """The scoring routes store llama.cpp's /completion and /tokenize rows under the server
    root (http://h:81), not under the base URL (http://h:81/v1) the user clears."""
    from attrlens.models.openai import OpenAIBackend

    root = OpenAIBackend("http://h:81/v1", "m", cache=False).root_url
    cache = CallCache(tmp_path / "calls.sqlite")
    cache.put("v1", {"a": 1}, endpoint="http://h:81/v1", model="m")
    cache.put("tok", {"a": 2}, endpoint=root, model="m")
    cache.put("cmp", {"a": 3}, endpoint=root + "/", model="m")
    cache.put("other", {"a": 4}, endpoint="http://h:82", model="m")
    cache.close()
    assert cache_clear("http://h:81/v1", cache_dir=tmp_path) == 3
    assert cache_info(tmp_path)["endpoints"] == {"http://h:82": 1}


def test_delete_one_row(tmp_path):
    cache = CallCache(tmp_path / "c.sqlite")
    cache.put("k", {})
    assert cache.delete("k") is True and cache.delete("k") is False
    assert len(cache) == 0


def _damaged_files(tmp_path: Path) -> dict[str, Path]:
    """Cache files damaged three ways: garbage, a malformed page, a row that is not JSON."""
    out = {}
    garbage = tmp_path / "garbage" / "calls.sqlite"
    garbage.parent.mkdir()
    garbage.write_bytes(b"this is not a database" * 100)
    out["garbage"] = garbage
    malformed = tmp_path / "malformed" / "calls.sqlite"
    with CallCache(malformed) as cache:
        for i in range(50):
            cache.put(f"k{i}", {"text": "x" * 500}, endpoint="http://e/v1", model="m")
    with open(malformed, "r+b") as f:  # overwrite one page of the table
        f.seek(4096 * 2)
        f.write(b"\xff" * 4096)
    out["malformed"] = malformed
    undecodable = tmp_path / "undecodable" / "calls.sqlite"
    with CallCache(undecodable) as cache:
        cache.put("k0", {"v": 1})
    conn = sqlite3.connect(undecodable)
    conn.execute("UPDATE calls SET response = '{not json' WHERE key = 'k0'")
    conn.commit()
    conn.close()
    out["undecodable"] = undecodable
    return out


def test_damaged_cache_file_is_a_clear_error_naming_the_file(tmp_path):
    from attrlens.errors import CacheDamagedError
    from attrlens.models.openai import OpenAIBackend

    for kind, path in _damaged_files(tmp_path).items():
        with pytest.raises(CacheDamagedError) as info:
            CallCache(path).get("k0")
        msg = str(info.value)
        assert str(path) in msg and "damaged" in msg and "Delete" in msg, kind
        assert "--no-cache" in msg and "writable" not in msg, kind
        if kind == "undecodable":  # only that row is unreadable
            continue
        # a backend on it fails the same way, before any request (the URL is unreachable)
        be = OpenAIBackend("http://127.0.0.1:9/v1", "m", cache=CallCache(path), max_retries=0)
        with pytest.raises(CacheDamagedError, match="damaged"):
            be.chat("hi")
        assert be.counters["api_calls"] == 0
        with pytest.raises(CacheDamagedError):
            cache_info(path.parent)
