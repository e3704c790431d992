"""``attrlens serve``: serve a GGUF model with llama.cpp on 127.0.0.1."""

from __future__ import annotations

import argparse
from typing import Any


def add_parser(sub: Any) -> argparse.ArgumentParser:
    v = sub.add_parser("serve", help="serve a GGUF model with llama.cpp on 127.0.0.1")
    v.add_argument("--model", help=".gguf file (default: the embedded model)")
    v.add_argument("--port", type=int, help="port (default: a free one)")
    v.add_argument("--n-ctx", type=int, default=4096)
    v.add_argument("--alias", help="model name clients send (default: smollm2 for the "
                   "embedded model, <file stem>-<sha256 prefix> for another .gguf file)")
    v.set_defaults(func=run)
    return v


def run(args: argparse.Namespace) -> int:
    from ..models.server import run_server_cli

    return run_server_cli(args.model, args.port, args.n_ctx, model_alias=args.alias)
