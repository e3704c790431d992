"""``attrlens cache info`` / ``attrlens cache clear [--endpoint URL]``: the served-model call
cache (``calls.sqlite`` in ``$ATTRLENS_CACHE_DIR``, ``$XDG_CACHE_HOME/attrlens`` or
``~/.cache/attrlens``). Neither command creates the cache; endpoints are shown with their
credentials redacted."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    c = sub.add_parser("cache", help="inspect or clear the served-model call cache",
                       description="The call cache of served (closed) models: every answered "
                       "request, reused by reruns.")
    csub = c.add_subparsers(dest="cache_command", required=True, parser_class=type(c))
    i = csub.add_parser("info", help="where the cache is, its size and calls per endpoint")
    i.add_argument("--dir", help="cache directory (default: $ATTRLENS_CACHE_DIR or the user "
                   "cache directory)")
    i.add_argument("--json", action="store_true", help="print the information as JSON")
    i.set_defaults(func=run_info)
    k = csub.add_parser("clear", help="delete cached calls (all, or one endpoint's)")
    k.add_argument("--endpoint", help="delete only the calls of this base URL and of its "
                   "server root (http://HOST:PORT/v1 also clears the /completion calls stored "
                   "under http://HOST:PORT; credentials and a trailing slash are ignored)")
    k.add_argument("--dir", help="cache directory (default: $ATTRLENS_CACHE_DIR or the user "
                   "cache directory)")
    k.set_defaults(func=run_clear)
    return c


def _when(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(t)))


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def run_info(args: argparse.Namespace) -> int:
    from ..models.cache import cache_info
    from ..report.terminal import literal

    info = cache_info(cache_dir=args.dir)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=True))
        return 0
    print(f"cache    {literal(info['path'], keep_newlines=False)}")
    if not info["exists"]:
        print("entries  0 (no cache file yet)")
        return 0
    print(f"entries  {info['entries']}")
    print(f"size     {_size(int(info['size_bytes']))}")
    print(f"oldest   {_when(info.get('oldest'))}")
    print(f"newest   {_when(info.get('newest'))}")
    endpoints = info.get("endpoints") or {}
    if endpoints:
        print("calls per endpoint:")
        for url, n in endpoints.items():
            print(f"  {n:>8}  {literal(url, keep_newlines=False)}")
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from ..errors import CacheDamagedError
    from ..models.cache import cache_clear, delete_cache_file
    from ..redact import redact_url

    try:
        n = cache_clear(endpoint=args.endpoint, cache_dir=args.dir)
    except CacheDamagedError as exc:
        # its rows can be neither read nor deleted one by one: the file goes, whole
        path = delete_cache_file(args.dir)
        print(f"the call cache at {path} was damaged ({exc.reason}): deleted the file; "
              "its calls will be asked for again")
        return 0
    where = f" of {redact_url(args.endpoint)}" if args.endpoint else ""
    print(f"deleted {n} cached call{'s' if n != 1 else ''}{where}")
    return 0
