"""Persistent cache of API calls: an interrupted explanation resumes, a repeated one is free.

One SQLite file (``calls.sqlite``) in the user cache directory, first found of
``$ATTRLENS_CACHE_DIR``, ``$XDG_CACHE_HOME/attrlens``, ``~/.cache/attrlens``. A row maps
``sha256(canonical JSON of (endpoint, model, request body))`` to the server's response JSON.
Each successful call is committed on its own (WAL journal), so a run killed at any point
keeps every call that had completed; several threads and processes may share one file.
The API key is never part of a key or a row.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..errors import BackendError

CACHE_FILE_NAME = "calls.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    key      TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL,
    model    TEXT NOT NULL,
    request  TEXT NOT NULL,
    response TEXT NOT NULL,
    created  REAL NOT NULL
)
"""


def default_cache_dir() -> Path:
    """The user cache directory of attrlens (not created here)."""
    env = os.environ.get("ATTRLENS_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "attrlens"


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace: equal requests, equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(endpoint: str, model: str, request: dict[str, Any]) -> str:
    """sha256 hex digest identifying one call: endpoint (base URL), model and request body.

    The endpoint is normalised (no trailing slash) so ``.../v1`` and ``.../v1/`` share rows.
    """
    payload = {"endpoint": endpoint.rstrip("/"), "model": model, "request": request}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


class CallCache:
    """SQLite store of completed API calls, safe to share between threads.

    ``path``: the SQLite file; default ``default_cache_dir() / "calls.sqlite"``. The file
    and its directory are created on first use.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_cache_dir() / CACHE_FILE_NAME
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def __repr__(self) -> str:
        return f"CallCache(path={str(self.path)!r})"

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                # autocommit (isolation_level=None): every put is its own committed write
                conn = sqlite3.connect(
                    self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(_SCHEMA)
            except (OSError, sqlite3.Error) as exc:
                raise BackendError(
                    f"Cannot open the call cache at {self.path}: {exc}. Set ATTRLENS_CACHE_DIR "
                    "to a writable directory, or turn the cache off (--no-cache / cache=False)."
                ) from exc
            self._conn = conn
        return self._conn

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached response for ``key``, or None."""
        with self._lock:
            row = (
                self._connect()
                .execute("SELECT response FROM calls WHERE key = ?", (key,))
                .fetchone()
            )
        return None if row is None else json.loads(row[0])

    def put(
        self,
        key: str,
        response: dict[str, Any],
        *,
        endpoint: str = "",
        model: str = "",
        request: dict[str, Any] | None = None,
    ) -> None:
        """Store one response, committed before returning (a later crash cannot lose it)."""
        with self._lock:
            self._connect().execute(
                "INSERT OR REPLACE INTO calls (key, endpoint, model, request, response, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    endpoint,
                    model,
                    canonical_json(request or {}),
                    canonical_json(response),
                    time.time(),
                ),
            )

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock:
            row = self._connect().execute("SELECT 1 FROM calls WHERE key = ?", (key,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock:
            return int(self._connect().execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def clear(self) -> None:
        """Delete every cached call."""
        with self._lock:
            self._connect().execute("DELETE FROM calls")

    def close(self) -> None:
        """Close the database connection (it reopens on the next use)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> CallCache:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
