"""``attrlens cache info`` / ``attrlens cache clear [--endpoint URL | --models]``: what
attrlens keeps on disk under ``$ATTRLENS_CACHE_DIR``, ``$XDG_CACHE_HOME/attrlens`` or
``~/.cache/attrlens``: the served-model call cache (``calls.sqlite``) and the de-quantized
copies of GGUF models (``models/``, ~0.5 GB each for the embedded model). Neither command
creates anything; endpoints are shown with their credentials redacted."""

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
    i = csub.add_parser("info", help="where the cache is, its size, calls per endpoint and the "
                        "model copies")
    i.add_argument("--dir", help="cache directory (default: $ATTRLENS_CACHE_DIR or the user "
                   "cache directory)")
    i.add_argument("--json", action="store_true", help="print the information as JSON")
    i.set_defaults(func=run_info)
    k = csub.add_parser("clear", help="delete cached calls (all, or one endpoint's)")
    k.add_argument("--endpoint", help="delete only the calls of this base URL and of its "
                   "server root (http://HOST:PORT/v1 also clears the /completion calls stored "
                   "under http://HOST:PORT; credentials and a trailing slash are ignored)")
    k.add_argument("--models", action="store_true",
                   help="delete the de-quantized GGUF model copies instead of the calls (each "
                   "GGUF is converted again on its next load)")
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
    copies = _model_copies(args.dir)
    if args.json:
        print(json.dumps({**info, "model_copies": copies}, indent=2, ensure_ascii=True))
        return 0
    print(f"cache    {literal(info['path'], keep_newlines=False)}")
    if not info["exists"]:
        print("entries  0 (no cache file yet)")
    else:
        print(f"entries  {info['entries']}")
        print(f"size     {_size(int(info['size_bytes']))}")
        print(f"oldest   {_when(info.get('oldest'))}")
        print(f"newest   {_when(info.get('newest'))}")
        endpoints = info.get("endpoints") or {}
        if endpoints:
            print("calls per endpoint:")
            for url, n in endpoints.items():
                print(f"  {n:>8}  {literal(url, keep_newlines=False)}")
    n = len(copies["copies"])
    print(f"model copies  {n} ({_size(int(copies['size_bytes']))}) in "
          f"{literal(copies['path'], keep_newlines=False)}"
          + (" (attrlens cache clear --models deletes them)" if n else ""))
    for c in copies["copies"]:
        what = ("a conversion stopped midway" if not c["complete"]
                else f"from {c['source']}" if c["source"] else "source not recorded")
        print(f"  {_size(int(c['size_bytes'])):>10}  {_when(c['modified'])}  "
              f"{literal(c['name'], keep_newlines=False)}  "
              f"({literal(what, keep_newlines=False)})")
    return 0


def _model_copies(root: str | None) -> dict[str, Any]:
    """The de-quantized GGUF copies: ``{"path", "size_bytes", "copies": [...]}``."""
    from ..models.hf import model_copies, model_copies_dir

    copies = model_copies(root)
    return {"path": str(model_copies_dir(root)),
            "size_bytes": sum(c["size_bytes"] for c in copies), "copies": copies}


def run_clear(args: argparse.Namespace) -> int:
    from ..errors import CacheDamagedError
    from ..models.cache import cache_clear, delete_cache_file
    from ..redact import redact_url

    if args.models:
        from ..errors import ParameterError
        from ..models.cache import _cache_path
        from ..models.hf import delete_model_copies

        if args.endpoint:
            raise ParameterError("cache clear takes --endpoint (calls of one server) or "
                                 "--models (the model copies), not both.")
        _cache_path(args.dir)  # the same checks of --dir as for the calls
        n, freed = delete_model_copies(args.dir)
        print(f"deleted {n} model cop{'ies' if n != 1 else 'y'} ({_size(freed)}); each GGUF "
              "is converted again on its next load")
        return 0
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
