"""Persistent cache of API calls: an interrupted explanation resumes, a repeated one is free.

One SQLite file (``calls.sqlite``) in the user cache directory, first found of
``$ATTRLENS_CACHE_DIR``, ``$XDG_CACHE_HOME/attrlens``, ``~/.cache/attrlens``. A row maps
``sha256(canonical JSON of (endpoint, model, request body))`` to the server's response JSON.
Each successful call is committed on its own (WAL journal), so a run killed at any point
keeps every call that had completed; several threads and processes may share one file.

The file holds full prompts and answers, so it is private: created 0600 in a 0700
directory, and an existing file (and a directory holding nothing but the cache) is
tightened to those modes when opened. No credential is ever written: the API key is never
part of a key or a row, and an endpoint's userinfo (``http://user:password@host``) is left
out of the key and the ``endpoint`` column (credentials do not change an answer, exactly
like the API key). Rows written by older versions with credentials in ``endpoint`` are
scrubbed when the file is opened. Deleted rows are overwritten (``secure_delete``).

``cache_info`` and ``cache_clear`` are the management functions behind
``attrlens cache info`` / ``attrlens cache clear``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BackendError, CacheDamagedError, ParameterError
from ..redact import redact_url, strip_userinfo

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


def endpoint_label(endpoint: str) -> str:
    """The form of an endpoint URL that is stored and compared: no userinfo, no trailing
    slash (``http://user:pw@host/v1/`` -> ``http://host/v1``)."""
    return strip_userinfo(str(endpoint).strip()).rstrip("/")


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace: equal requests, equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(endpoint: str, model: str, request: dict[str, Any]) -> str:
    """sha256 hex digest identifying one call: endpoint (base URL), model and request body.

    The endpoint is normalised (no userinfo, no trailing slash): ``.../v1`` and ``.../v1/``
    share rows, and credentials in the URL are neither stored nor hashed into the key.
    """
    payload = {"endpoint": endpoint_label(endpoint), "model": model, "request": request}
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

    def _damaged(self, exc: BaseException) -> CacheDamagedError:
        reason = str(exc) or type(exc).__name__
        return CacheDamagedError(
            f"The call cache at {self.path} is damaged ({reason}). Delete that file "
            "('attrlens cache clear' deletes a damaged cache) or turn the cache off "
            "(--no-cache / cache=False).",
            str(self.path),
            reason,
        )

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """Turn a damaged file's errors (SQLite's corruption errors, rows that are not
        JSON) into CacheDamagedError; OperationalError (locked, I/O) passes through."""
        try:
            yield
        except sqlite3.OperationalError:
            raise
        except (sqlite3.DatabaseError, ValueError) as exc:
            raise self._damaged(exc) from exc

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            conn = None
            try:
                _private_dir(self.path.parent)
                _private_file(self.path)
                # autocommit (isolation_level=None): every put is its own committed write
                conn = sqlite3.connect(
                    self.path, timeout=30.0, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA secure_delete=ON")  # deleted rows leave no trace
                conn.execute(_SCHEMA)
                for suffix in ("-wal", "-shm"):  # SQLite copies the file's mode; make sure
                    _tighten(self.path.with_name(self.path.name + suffix), 0o600)
                _scrub_endpoints(conn)
            except (OSError, sqlite3.Error) as exc:
                if conn is not None:
                    conn.close()
                if (isinstance(exc, sqlite3.DatabaseError)
                        and not isinstance(exc, sqlite3.OperationalError)):
                    raise self._damaged(exc) from exc  # not a database, or a corrupt one
                raise BackendError(
                    f"Cannot open the call cache at {self.path}: {exc}. Set ATTRLENS_CACHE_DIR "
                    "to a writable directory, or turn the cache off (--no-cache / cache=False)."
                ) from exc
            self._conn = conn
        return self._conn

    def get(self, key: str) -> dict[str, Any] | None:
        """The cached response for ``key``, or None."""
        with self._lock, self._reading():
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
        """Store one response, committed before returning (a later crash cannot lose it).

        ``endpoint`` is stored without its userinfo (see ``endpoint_label``). Store only
        answers the client accepted: a row is replayed on every later identical request.
        """
        with self._lock, self._reading():
            self._connect().execute(
                "INSERT OR REPLACE INTO calls (key, endpoint, model, request, response, created)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    key,
                    endpoint_label(endpoint),
                    model,
                    canonical_json(request or {}),
                    canonical_json(response),
                    time.time(),
                ),
            )

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, str):
            return False
        with self._lock, self._reading():
            row = self._connect().execute("SELECT 1 FROM calls WHERE key = ?", (key,)).fetchone()
        return row is not None

    def __len__(self) -> int:
        with self._lock, self._reading():
            return int(self._connect().execute("SELECT COUNT(*) FROM calls").fetchone()[0])

    def delete(self, key: str) -> bool:
        """Delete the row of ``key``; True if there was one."""
        with self._lock, self._reading():
            cur = self._connect().execute("DELETE FROM calls WHERE key = ?", (key,))
        return cur.rowcount > 0

    def clear(self, endpoint: str | None = None) -> int:
        """Delete every cached call (or those of ``endpoint``, compared without userinfo or
        trailing slash, and those the routes at its server root stored: clearing
        ``http://host/v1`` clears ``http://host``'s ``/completion`` rows too); returns the
        number of rows deleted."""
        with self._lock, self._reading():
            conn = self._connect()
            if endpoint is None:
                removed = conn.execute("DELETE FROM calls").rowcount
            else:
                from .openai import server_root

                label = endpoint_label(endpoint)
                want = {label, server_root(label)}
                names = [
                    row[0]
                    for row in conn.execute("SELECT DISTINCT endpoint FROM calls")
                    if endpoint_label(row[0]) in want
                ]
                removed = 0
                for name in names:
                    removed += conn.execute(
                        "DELETE FROM calls WHERE endpoint = ?", (name,)
                    ).rowcount
            if removed:
                _compact(conn)
        return int(removed)

    def info(self) -> dict[str, Any]:
        """Summary of the file: see ``cache_info``."""
        with self._lock, self._reading():
            conn = self._connect()
            entries = int(conn.execute("SELECT COUNT(*) FROM calls").fetchone()[0])
            endpoints: dict[str, int] = {}
            for name, count in conn.execute(
                "SELECT endpoint, COUNT(*) FROM calls GROUP BY endpoint"
            ):
                label = redact_url(endpoint_label(name)) or "(unknown)"
                endpoints[label] = endpoints.get(label, 0) + int(count)
            oldest, newest = conn.execute("SELECT MIN(created), MAX(created) FROM calls").fetchone()
        return {
            "path": str(self.path),
            "exists": True,
            "entries": entries,
            "size_bytes": _size_on_disk(self.path),
            "endpoints": dict(sorted(endpoints.items(), key=lambda kv: (-kv[1], kv[0]))),
            "oldest": oldest,
            "newest": newest,
        }

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


# --- file modes, scrubbing, management --------------------------------------------------
_PRIVATE_FILE = 0o600
_PRIVATE_DIR = 0o700


def _tighten(path: Path, mode: int) -> None:
    """chmod ``path`` to ``mode`` when it exists, is ours and grants more (POSIX only)."""
    if os.name != "posix":
        return
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if st.st_uid == os.getuid() and (st.st_mode & 0o777) & ~mode:
        path.chmod(mode)


def _private_dir(path: Path) -> None:
    """Create ``path`` 0700; tighten an existing one only when it holds nothing but cache
    files (a directory the user shares with other things keeps its mode: the 0600 file is
    what protects the calls)."""
    if not path.exists():
        path.mkdir(parents=True, exist_ok=True, mode=_PRIVATE_DIR)
        _tighten(path, _PRIVATE_DIR)  # mkdir's mode is filtered by the umask only
        return
    try:
        names = [p.name for p in path.iterdir()]
    except OSError:
        return
    if all(n.startswith(CACHE_FILE_NAME) for n in names):
        _tighten(path, _PRIVATE_DIR)


def _private_file(path: Path) -> None:
    """Create ``path`` 0600 (atomically, before SQLite opens it) or tighten an existing one."""
    if os.name == "posix" and not path.exists():
        fd = os.open(path, os.O_RDWR | os.O_CREAT, _PRIVATE_FILE)
        os.close(fd)
    _tighten(path, _PRIVATE_FILE)


def _scrub_endpoints(conn: sqlite3.Connection) -> None:
    """Remove userinfo that older versions stored in the endpoint column."""
    dirty = [
        row[0]
        for row in conn.execute("SELECT DISTINCT endpoint FROM calls WHERE endpoint LIKE '%@%'")
        if endpoint_label(row[0]) != row[0]
    ]
    for name in dirty:
        conn.execute(
            "UPDATE calls SET endpoint = ? WHERE endpoint = ?", (endpoint_label(name), name)
        )
    if dirty:
        _compact(conn)


def _compact(conn: sqlite3.Connection) -> None:
    """Fold the WAL into the file and rebuild it, so removed text is gone from disk.

    Best effort: another process holding the file makes this a no-op (the rows are deleted
    and, with secure_delete, overwritten either way)."""
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.execute("VACUUM")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError:
        pass


def _size_on_disk(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        try:
            total += path.with_name(path.name + suffix).stat().st_size
        except OSError:
            pass
    return total


def _cache_path(cache_dir: str | os.PathLike[str] | None) -> Path:
    """``calls.sqlite`` in ``cache_dir`` (default ``default_cache_dir()``); ParameterError
    for an empty name or a path that is not a directory."""
    if cache_dir is not None and not str(cache_dir).strip():
        raise ParameterError(
            "The cache directory is empty; give the directory that holds calls.sqlite "
            "(--dir DIR), or leave it out for the default one."
        )
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if base.exists() and not base.is_dir():
        raise ParameterError(
            f"The cache directory {base} is not a directory; give the directory that "
            "holds calls.sqlite (--dir DIR), not a file."
        )
    return base / CACHE_FILE_NAME


def cache_info(cache_dir: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What the call cache holds, without creating it.

    ``cache_dir``: the directory of ``calls.sqlite`` (default ``default_cache_dir()``).
    Returns ``{"path": str, "exists": bool, "entries": int, "size_bytes": int (file + WAL),
    "endpoints": {endpoint URL (credentials redacted): entries, most first},
    "oldest"/"newest": unix time of the first/last stored call or None}``.
    """
    path = _cache_path(cache_dir)
    if not path.is_file():
        return {
            "path": str(path),
            "exists": False,
            "entries": 0,
            "size_bytes": 0,
            "endpoints": {},
            "oldest": None,
            "newest": None,
        }
    with CallCache(path) as cache:
        return cache.info()


def cache_clear(
    endpoint: str | None = None, cache_dir: str | os.PathLike[str] | None = None
) -> int:
    """Delete cached calls: all of them, or those of ``endpoint`` (a base URL, compared
    without userinfo or trailing slash, with those of its server root). Returns the number
    of calls deleted (0 when the cache does not exist; it is not created)."""
    if endpoint is not None and not endpoint_label(endpoint):
        raise ParameterError(
            "The endpoint to clear is empty; give a base URL such as "
            "http://127.0.0.1:8080/v1 (--endpoint URL), or leave it out to clear every call."
        )
    path = _cache_path(cache_dir)
    if not path.is_file():
        return 0
    with CallCache(path) as cache:
        return cache.clear(endpoint)


def delete_cache_file(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Delete the cache file itself (with its WAL and shared-memory files): the way out of
    a damaged cache (CacheDamagedError), whose rows cannot be read or deleted one by one.
    Returns the path of the file."""
    path = _cache_path(cache_dir)
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            path.with_name(path.name + suffix).unlink()
    return path
