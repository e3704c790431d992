"""Tests of the persistent call cache (SQLite)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from attrlens.errors import BackendError
from attrlens.models.cache import CallCache, cache_key, default_cache_dir

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
